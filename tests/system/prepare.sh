#!/bin/sh
# Runs inside the container root (systemd-nspawn, not booted) with /payload bound:
# the machine as its administrator found it before installing llmc-rag. A user
# "llmc" who owns the repositories and a copy of this clone, with sudo; the config
# the administrator wrote; the Ollama emulator as a service; the check unit.
# llmc-rag itself is installed by checks.py with the README's command, booted.
set -eu
# No network here: pip takes every wheel from /payload/wheels (bound at boot too).
cat >/etc/pip.conf <<'PIP'
[global]
no-index = true
find-links = /payload/wheels
PIP

# The account that owns the repos (its home is 0700: the unit must run as it),
# and another one that must not read the store.
useradd --create-home --shell /bin/bash llmc
useradd --create-home --shell /bin/bash other
chmod 0700 /home/llmc
echo 'llmc ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/llmc
chmod 0440 /etc/sudoers.d/llmc
cp -r /payload/clone /home/llmc/llmc-rag-service
mkdir -p /home/llmc/repo/src /home/llmc/second
cat >/home/llmc/repo/src/app.py <<'PY'
def add(a, b):
    return a + b


class Greeter:
    def greet(self, name):
        return f"hello {name}"
PY
printf 'def second():\n    return 2\n' >/home/llmc/second/b.py
# Many directories, so adding the watches takes a moment before READY.
i=0
while [ $i -lt 300 ]; do mkdir -p /home/llmc/repo/tree/d$i/a/b; i=$((i + 1)); done
chown -R llmc:llmc /home/llmc

# The config, as the administrator wrote it: install.sh keeps an existing one.
mkdir -p /etc/llmc-rag
cat >/etc/llmc-rag/config.yaml <<'YAML'
repos:
  - path: /home/llmc/repo
ollama:
  url: http://127.0.0.1:11434
  model: test-model
  timeout_s: 30
logging:
  level: info
  format: json
YAML
mkdir -p /etc/systemd/system/llmc-rag.service.d
cat >/etc/systemd/system/llmc-rag.service.d/system-test.conf <<'UNIT'
# Short watchdog and restart delay, so the watchdog check takes seconds.
[Service]
WatchdogSec=4
RestartSec=1
UNIT

# The emulator: its own venv (structlog) and a copy of the package, so it runs
# before llmc-rag is installed and after it is uninstalled.
python3 -m venv /opt/ollama-emulator
/opt/ollama-emulator/bin/pip install -q structlog
mkdir -p /opt/ollama-emulator/src /opt/llmc-rag-test
cp -r /payload/clone/llmc_rag_service /opt/ollama-emulator/src/
cp /payload/checks.py /opt/llmc-rag-test/
cat >/etc/systemd/system/ollama-emulator.service <<'UNIT'
[Unit]
Description=Ollama emulator for the llmc-rag system test

[Service]
Environment=PYTHONPATH=/opt/ollama-emulator/src
ExecStart=/opt/ollama-emulator/bin/python -m llmc_rag_service.testing --port 11434 --model test-model --embed-model nomic-embed-text --latency-s 0.05

[Install]
WantedBy=multi-user.target
UNIT

cat >/etc/systemd/system/llmc-rag-check.service <<'UNIT'
[Unit]
Description=llmc-rag system checks (results to /results, then power off)
After=ollama-emulator.service systemd-journald.service dbus.service systemd-user-sessions.service
Wants=ollama-emulator.service
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /opt/llmc-rag-test/checks.py /results
TimeoutStartSec=900
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable ollama-emulator.service llmc-rag-check.service
# Nothing else at boot that waits on a network or a login.
systemctl mask systemd-networkd-wait-online.service console-getty.service getty@.service 2>/dev/null || true
echo prepared
