"""Which files hold credentials: by name (never opened) and by content (only their head read).

By name, :func:`secret_file_kind` (case-insensitive): the basename, or for a pattern
with a ``/`` the path's last components (``.kube/config``), matches one of
:data:`SECRET_FILES`, grouped by kind. No ``.gitignore`` negation or config can
re-include such a file.

By content, :func:`is_secret_content`: a config-format file (JSON, YAML, TOML, INI,
``.cfg``/``.conf``/``.properties``) whose first :data:`HEAD_BYTES` hold a key that
names a secret (``private_key``, ``client_secret``, ``password``, ``token``,
``secret``, ``api_key`` and names ending so: ``db_password``, ``clientSecret``)
with a literal value (not ``${VAR}``, ``{{ x }}``, ``<...>``, empty or null), a
Kubernetes ``Secret`` manifest, or a private-key block. Such a file is skipped like
a secret file by name. Source code is not judged by content: its secret values are
redacted instead (``index/redact.py``), so the rest of it is still indexed.
"""

from __future__ import annotations

import re
from fnmatch import translate
from pathlib import PurePosixPath

#: How much of a config-format file :func:`is_secret_content` needs (bytes).
HEAD_BYTES = 65536

SECRET_FILES: dict[str, tuple[str, ...]] = {
    # dotenv files, including .env.local / .env.production (templates too: better safe).
    "dotenv": (".env", ".env.*", "*.env"),
    "private-key": ("*.pem", "*.key", "*.ppk", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*"),
    "keystore": ("*.p12", "*.pfx", "*.keystore", "*.jks", "*.bks", "*.kdbx"),
    # Cloud CLIs: AWS (~/.aws/credentials), GCP service-account keys and ADC, generic.
    "cloud-credentials": ("credentials", "credentials.*", "service-account*.json", "*-service-account.json",
                          "application_default_credentials.json"),
    "docker-config": (".docker/config.json", ".dockercfg"),
    "kubeconfig": (".kube/config", "kubeconfig", "*.kubeconfig"),
    "terraform-vars": ("*.tfvars", "*.tfvars.json", "*.tfstate", "*.tfstate.backup"),
    "secrets-manifest": ("secrets.yaml", "secrets.yml", "secrets.*.yaml", "secrets.*.yml", "*.secrets.yaml",
                         "*.secrets.yml"),
    "git-credentials": (".git-credentials",),
    "netrc": (".netrc", "_netrc"),
    "registry-credentials": (".npmrc", ".pypirc"),
    "database-credentials": (".pgpass", ".my.cnf"),
    "htpasswd": (".htpasswd",),
    "openvpn": ("*.ovpn",),
}

_CONFIG_SUFFIXES = frozenset({".json", ".jsonc", ".json5", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf",
                              ".properties"})
_SECRET_NAMES = frozenset({"private_key", "client_secret", "password", "passwd", "token", "secret", "api_key",
                           "apikey", "access_token", "refresh_token", "auth_token", "secret_key", "access_key",
                           "secret_access_key", "private_key_data", "credentials"})
_SECRET_SUFFIXES = ("_password", "_passwd", "_token", "_secret", "_api_key", "_apikey", "_private_key",
                    "_secret_key", "_access_key")
# "key": "value" anywhere (JSON), and key: value / key = value at a line's start (YAML, TOML, INI).
_JSON_PAIR = re.compile(r'"(?P<key>[^"\\\n]{1,80})"\s*:\s*"(?P<value>(?:[^"\\\n]|\\.){0,4096})"')
_LINE_PAIR = re.compile(r"""^[ \t-]*["']?(?P<key>[A-Za-z0-9_.-]{1,80})["']?[ \t]*[:=][ \t]*"""
                        r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s#;][^\n#;]*?)[ \t]*(?:[#;].*)?$""", re.MULTILINE)
_NOT_LITERAL = re.compile(r"^(?:|null|none|nil|~|true|false|\$.*|\{\{.*|<.*>|%\(.*|\*+|x+|changeme|\[\]|\{\})$",
                          re.IGNORECASE)
_K8S_SECRET = re.compile(r'^kind:[ \t]*["\']?Secret["\']?[ \t]*$|"kind"\s*:\s*"Secret"', re.MULTILINE)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")


def _by_depth() -> list[tuple[int, re.Pattern[str], list[str]]]:
    """:data:`SECRET_FILES` as one regex per pattern depth (path components it
    spans), each an alternation of the patterns in the table's order:
    ``(depth, regex, kind of each alternative)``. One match per depth instead
    of an fnmatch per pattern: this runs for every path of every scan."""
    groups: dict[int, list[tuple[str, str]]] = {}
    for kind, patterns in SECRET_FILES.items():
        for pattern in patterns:
            groups.setdefault(pattern.count("/") + 1, []).append((kind, pattern))
    return [(depth, re.compile("|".join(f"(?P<p{i}>{translate(p)})" for i, (_, p) in enumerate(items))),
             [kind for kind, _ in items]) for depth, items in sorted(groups.items())]


_ORDER = {kind: i for i, kind in enumerate(SECRET_FILES)}
_BY_DEPTH = _by_depth()


def secret_file_kind(relpath: str) -> str | None:
    """The kind of secret file ``relpath`` (POSIX, relative to the repo) is by its
    name, e.g. ``kubeconfig`` for ``ops/.kube/config``; None if its name says nothing.
    When patterns of several kinds match, the first kind of :data:`SECRET_FILES` wins."""
    parts = relpath.lower().rstrip("/").split("/")
    found: list[str] = []
    for depth, regex, kinds in _BY_DEPTH:
        m = regex.match("/".join(parts[-depth:])) if len(parts) >= depth else None
        if m is not None and m.lastgroup is not None:
            found.append(kinds[int(m.lastgroup[1:])])
    return min(found, key=_ORDER.__getitem__) if found else None


def _key_says_secret(key: str) -> bool:
    """``clientSecret``, ``client-secret``, ``DB_PASSWORD`` -> normalised and checked."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key.rsplit(".", 1)[-1]).lower().replace("-", "_")
    return name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES)


def _literal(value: str) -> bool:
    """True for a value given in the file, not a reference, template, empty or null."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].strip()
    return not _NOT_LITERAL.match(value)


def is_secret_content(path: str, head: bytes) -> str | None:
    """Why a config-format file must be treated as a secret file, judged from
    ``head`` (its first :data:`HEAD_BYTES` bytes), or None.

    ``path`` only selects the format (by suffix); other files give None. The
    reason names the key (``key 'client_secret' has a literal value``), never a
    value. Pure: reads nothing, raises nothing.
    """
    if PurePosixPath(path.lower()).suffix not in _CONFIG_SUFFIXES:
        return None
    text = head[:HEAD_BYTES].decode("utf-8", "replace")
    if _PRIVATE_KEY.search(text):
        return "private-key block"
    if _K8S_SECRET.search(text):
        return "kubernetes Secret manifest"
    for pattern in (_JSON_PAIR, _LINE_PAIR):
        for m in pattern.finditer(text):
            if _key_says_secret(m.group("key")) and _literal(m.group("value")):
                return f"key {m.group('key')!r} has a literal value"
    return None
