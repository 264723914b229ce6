#!/bin/sh
# Runs inside the container root (systemd-nspawn, not booted) with /payload bound:
# installs llmc-rag from wheels, a user with repos, the config, the units.
set -eu
python3 -m venv /opt/llmc-rag
/opt/llmc-rag/bin/pip install -q --no-index --find-links /payload/wheels llmc-rag-service
mkdir -p /opt/llmc-rag-test
cp /payload/checks.py /opt/llmc-rag-test/

# The account that owns the repos (its home is 0700: the unit must run as it).
useradd --create-home --shell /bin/sh llmc
chmod 0700 /home/llmc
mkdir -p /home/llmc/repo/src /home/llmc/second
cat >/home/llmc/repo/src/app.py <<'EOF'
def add(a, b):
    return a + b


class Greeter:
    def greet(self, name):
        return f"hello {name}"
EOF
printf 'def second():\n    return 2\n' >/home/llmc/second/b.py
# Many directories, so adding the watches takes a moment before READY.
i=0
while [ $i -lt 300 ]; do mkdir -p /home/llmc/repo/tree/d$i/a/b; i=$((i + 1)); done
chown -R llmc:llmc /home/llmc

mkdir -p /etc/llmc-rag
cat >/etc/llmc-rag/config.yaml <<'EOF'
repos:
  - path: /home/llmc/repo
ollama:
  url: http://127.0.0.1:11434
  model: test-model
  timeout_s: 30
logging:
  level: info
  format: json
EOF

# The unit as a pip user installs it.
PATH=/opt/llmc-rag/bin:$PATH llmc-rag install-unit --run-as llmc
mkdir -p /etc/systemd/system/llmc-rag.service.d
cat >/etc/systemd/system/llmc-rag.service.d/system-test.conf <<'EOF'
# Short watchdog and restart delay, so the watchdog check takes seconds.
[Service]
WatchdogSec=4
RestartSec=1
EOF

cat >/etc/systemd/system/ollama-emulator.service <<'EOF'
[Unit]
Description=Ollama emulator for the llmc-rag system test

[Service]
ExecStart=/opt/llmc-rag/bin/python -m llmc_rag_service.testing.emulator --port 11434 --model test-model --latency-s 0.05

[Install]
WantedBy=multi-user.target
EOF

cat >/etc/systemd/system/llmc-rag-check.service <<'EOF'
[Unit]
Description=llmc-rag system checks (results to /results, then power off)
After=ollama-emulator.service systemd-journald.service dbus.service
Wants=ollama-emulator.service
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/opt/llmc-rag/bin/python /opt/llmc-rag-test/checks.py /results
TimeoutStartSec=480
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
systemctl enable ollama-emulator.service llmc-rag-check.service
# Nothing else at boot that waits on a network or a login.
systemctl mask systemd-networkd-wait-online.service console-getty.service getty@.service 2>/dev/null || true
echo prepared
