"""Configuration: load YAML, apply defaults, validate once into frozen values.

The key set is the contract in DESIGN.md ("Contract: config"). Every error is a
:class:`ConfigError` that names the file, the dotted key path and, where YAML
knows it, the line; only ``cli.py`` turns it into exit status 78 (EX_CONFIG).

Lookup order (:func:`find_config_path`): ``-c``, ``$LLMC_RAG_CONFIG``,
``$XDG_CONFIG_HOME/llmc-rag/config.yaml``, ``/etc/llmc-rag/config.yaml``;
:func:`locate_config` says what to do when no file is there.
The state directory when the file sets none: :func:`default_state_dir`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, cast

import pathspec
import yaml

from llmc_rag_service.paths import expand_user
from llmc_rag_service.team.settings import check_dsn

#: Ollama options that are fixed when the model is loaded: sending a
#: different value makes the server reload the model (cases O7).
LOAD_TIME_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")

#: The system service's config file; with it, the default store is :data:`SYSTEM_STATE_DIR`.
SYSTEM_CONFIG = Path("/etc/llmc-rag/config.yaml")
#: ``StateDirectory=llmc-rag`` of the system unit: where the system service keeps its store.
SYSTEM_STATE_DIR = Path("/var/lib/llmc-rag")
#: ``search.embed_model`` when the config names none.
DEFAULT_EMBED_MODEL = "nomic-embed-text"

#: Upper bound of ``ollama.concurrency``: one worker thread per request in flight.
MAX_CONCURRENCY = 64

# Ollama options with integer values (and their minimum), and with numbers
# (Ollama API doc, "Valid Parameters and Values"); others pass through.
_INT_OPTIONS = {"num_ctx": 256, "num_predict": 1, "num_batch": 1, "num_gpu": 0, "main_gpu": 0,
                "num_thread": 0, "num_keep": -1, "seed": -2**63, "top_k": 0, "repeat_last_n": -1}
_NUMBER_OPTIONS = frozenset({"temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                             "presence_penalty", "frequency_penalty", "mirostat_tau", "mirostat_eta"})

# A secrets.allow entry of 16-64 hex digits is a sha256 fingerprint prefix, else a regex.
_FINGERPRINT = re.compile(r"[0-9a-fA-F]{16,64}")


def is_fingerprint(entry: str) -> bool:
    """True if a ``secrets.allow`` entry is a sha256 hex fingerprint (prefix), not a regex."""
    return _FINGERPRINT.fullmatch(entry) is not None


# Go duration as Ollama parses keep_alive strings ("5m", "1h30m", "-1s", "300ms").
_GO_DURATION = re.compile(r"^[+-]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")


# $NAME or ${NAME} anywhere in a path: a shell would expand it, YAML does not.
_SHELL_VARIABLE = re.compile(r"\$\{?[A-Za-z_]")


class ConfigError(Exception):
    """A config file is missing, unreadable or invalid.

    Attributes:
        path: The config file.
        key: Dotted key path (``ollama.keep_alive``, ``repos[1].path``) or ``""``.
        line: 1-based line of the offending key in the file, when known.
    """

    def __init__(self, path: Path | str, key: str, message: str, line: int | None = None):
        self.path, self.key, self.line = Path(path), key, line
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


@dataclass(frozen=True)
class RepoConfig:
    """One watched repository: ``path`` absolute, ``exclude`` gitignore-syntax patterns."""

    path: Path
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostConfig:
    """One Ollama server: base ``url`` and ``concurrency`` (requests in flight)."""

    url: str
    concurrency: int = 1


@dataclass(frozen=True)
class OllamaConfig:
    """How to reach Ollama. ``keep_alive`` is sent verbatim (number of seconds or
    Go duration string). ``load_timeout_s``: longest wait for the first byte
    of an answer (Ollama's queue, a cold model load and prompt evaluation all
    come before it, cases O3); ``timeout_s``: longest time from that first
    byte to the complete answer. One request therefore ends within
    ``load_timeout_s + timeout_s`` plus connect and write time (see
    ``ollama.py``). ``options`` is Ollama's ``options`` object. ``hosts``
    lists several servers (e.g. one per GPU); empty means the single host
    ``url`` with ``concurrency`` (see :meth:`all_hosts`). ``warm_up``: ask
    each host to load the model when ``serve`` starts (nothing waits for it)."""

    url: str = "http://127.0.0.1:11434"
    model: str = "qwen2.5:7b-instruct-q4_K_M"
    keep_alive: int | float | str = "15m"
    concurrency: int = 1
    timeout_s: float = 300.0
    load_timeout_s: float = 300.0
    options: Mapping[str, Any] = field(default_factory=lambda: {"temperature": 0.2, "num_ctx": 8192})
    hosts: tuple[HostConfig, ...] = ()
    warm_up: bool = False

    def all_hosts(self) -> tuple[HostConfig, ...]:
        """``hosts``, or the one host given by ``url`` and ``concurrency``."""
        return self.hosts or (HostConfig(self.url, self.concurrency),)


@dataclass(frozen=True)
class WatchConfig:
    """``debounce_ms``: quiet time before a saved path is processed;
    ``max_delay_ms``: a path changing continuously is still processed after
    this long; ``max_file_bytes``: larger files are skipped; ``reconcile_s``:
    seconds between full reconcile scans that catch anything events missed
    (0 = never)."""

    debounce_ms: int = 500
    max_file_bytes: int = 1_048_576
    max_delay_ms: int = 5000
    reconcile_s: float = 3600.0


@dataclass(frozen=True)
class QueueConfig:
    """``max_attempts``: failed attempts before a job is dead-lettered."""

    max_attempts: int = 5


@dataclass(frozen=True)
class SearchConfig:
    """``embed_model``: the Ollama embedding model (``POST /api/embed``) for
    semantic search; None turns embeddings off (lexical search only)."""

    embed_model: str | None = DEFAULT_EMBED_MODEL


@dataclass(frozen=True)
class TeamConfig:
    """Team mode (README "Team mode"): ``postgres`` is a libpq DSN (URL or
    key/value form; the password best from ``PGPASSWORD``/``PGPASSFILE``) of
    the team cache and work queue, or None for none. ``lease_s``: seconds a
    claim on a span holds without renewal, so a teammate's daemon that died
    blocks that span at most this long (renewed every third of it)."""

    postgres: str | None = None
    lease_s: float = 120.0


@dataclass(frozen=True)
class SecretsConfig:
    """``allow``: values that are not secrets although a detector says so, each a
    sha256 hex fingerprint of the value (16 to 64 leading hex digits) or a regex
    the whole value matches (see ``index/redact.py``)."""

    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    """``level``: debug|info|warning|error; ``format``: auto|json|console."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class Config:
    """The whole validated configuration. ``source`` is the file it came from."""

    state_dir: Path
    repos: tuple[RepoConfig, ...] = ()
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    team: TeamConfig = field(default_factory=TeamConfig)
    source: Path | None = None

    @property
    def db_path(self) -> Path:
        """The state database, ``<state_dir>/llmc-rag.db``."""
        return self.state_dir / "llmc-rag.db"


#: The store's files in ``state_dir`` (the database, its WAL/SHM/journal, the lock).
STATE_FILES = ("llmc-rag.db*", "llmc-rag.lock")


def _anchored(rel: Path) -> str:
    """A gitignore pattern naming exactly the directory ``rel`` of a repo (anchored, escaped)."""
    return "/" + re.sub(r"([\\*?\[\]!# ])", r"\\\1", rel.as_posix()) + "/"


def exclude_owned(repo: RepoConfig, repos: tuple[RepoConfig, ...], state_dir: Path) -> RepoConfig:
    """``repo`` with what it must not index excluded: a repo listed inside it (whose
    own entry, with its own excludes, indexes those files: else each is stored, searched
    and counted twice), and the store when ``state_dir`` lies inside it (else every
    commit's WAL write is a file event, indexing it writes the store, and so on forever)."""
    extra = [_anchored(other.path.relative_to(repo.path)) for other in repos
             if other.path != repo.path and repo.path in other.path.parents]
    try:
        rel = Path(os.path.realpath(state_dir)).relative_to(repo.path)
    except ValueError:
        rel = None
    if rel is not None:
        extra += [_anchored(rel)] if rel.parts else [f"/{name}" for name in STATE_FILES]
    return RepoConfig(path=repo.path, exclude=repo.exclude + tuple(extra)) if extra else repo


def default_state_dir(env: Mapping[str, str] | None = None, config_path: Path | str | None = None) -> Path:
    """The store's directory when the config sets no ``state_dir``:
    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``); else
    :data:`SYSTEM_STATE_DIR` when ``config_path`` is :data:`SYSTEM_CONFIG`,
    so every command run with the system config reads the system service's
    store; else ``$XDG_STATE_HOME/llmc-rag`` (default ``~/.local/state/llmc-rag``)."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        # systemd passes a colon-separated list when several are configured.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if config_path is not None and Path(os.path.abspath(config_path)) == SYSTEM_CONFIG:
        return SYSTEM_STATE_DIR
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llmc-rag"


def find_config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The config file to use, by the lookup order in the module docstring."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("LLMC_RAG_CONFIG"):
        return Path(env["LLMC_RAG_CONFIG"])
    user = user_config_path(env)
    return user if user.exists() else SYSTEM_CONFIG


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/llmc-rag/config.yaml`` (default ``~/.config/llmc-rag/config.yaml``)."""
    env = os.environ if env is None else env
    return Path(env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")) / "llmc-rag" / "config.yaml"


def locate_config(explicit: str | None, env: Mapping[str, str] | None = None, *, root: bool | None = None) -> Path:
    """:func:`find_config_path`, and the file must be there.

    Raises:
        ConfigError: no file at the path found, in one line saying what to do:
            create it from the commented sample, or drop ``-c`` / unset
            ``$LLMC_RAG_CONFIG`` to use the default lookup. With neither given,
            the path named first is the one this user would create: the user
            config, or :data:`SYSTEM_CONFIG` for root (``root`` defaults to
            the effective uid being 0).
    """
    env = os.environ if env is None else env
    path = find_config_path(explicit, env)
    try:
        os.stat(path)
        return path
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        return path  # there but unreadable: load_config names the OS error
    user = user_config_path(env)
    if explicit or env.get("LLMC_RAG_CONFIG"):
        drop = "drop -c" if explicit else "unset LLMC_RAG_CONFIG"
        raise ConfigError(path, "", f"no such file; create it from the commented sample: {_copy_sample(path)} "
                          f"(then set repos), or {drop} to use the default ({user}, else {SYSTEM_CONFIG})")
    root = os.geteuid() == 0 if root is None else root
    first, other = (SYSTEM_CONFIG, user) if root else (user, SYSTEM_CONFIG)
    raise ConfigError(first, "", f"no config file found here, nor at {other}, nor named by -c or "
                      f"$LLMC_RAG_CONFIG; create it from the commented sample: {_copy_sample(first)} "
                      "(then set repos)" + ("; or ./scripts/install.sh --run-as USER from a clone writes "
                                            "it for the system service" if root else ""))


def _copy_sample(dest: Path) -> str:
    """The command that copies the shipped sample (``etc/llmc-rag.yaml`` of the
    source tree) to ``dest``: its absolute path when this package runs from a
    clone or an editable install, else the name in the source tree."""
    sample = Path(__file__).resolve().parent.parent / "etc" / "llmc-rag.yaml"
    source = str(sample) if sample.is_file() else "etc/llmc-rag.yaml (in the llmc-rag-service source)"
    mkdir = "" if dest.parent.is_dir() else f"mkdir -p {dest.parent} && "
    return f"{mkdir}cp {source} {dest}"


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``.

    Raises:
        ConfigError: missing/unreadable file, YAML syntax error, an empty file,
            a duplicate key at any level, unknown key, wrong type or
            out-of-range value, no repos (naming key and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read config: {exc}") from exc
    try:
        _refuse_aliases(path, text)
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(path, "", f"invalid YAML: {problem}", mark.line + 1 if mark else None) from exc
    if node is None:
        raise ConfigError(path, "repos", "the config is empty; at least one repository is required "
                          "(repos: [{path: ...}], see etc/llmc-rag.yaml)", 1)
    _refuse_duplicate_keys(path, node)
    return _Validator(path, node, env).build(data)


def _refuse_aliases(path: Path, text: str) -> None:
    """Raise ConfigError at the first YAML alias (``*name``): a config needs none,
    and a self-referencing one (``a: &a [*a]``) would make every walk endless."""
    for event in yaml.parse(text):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(path, "", f"YAML aliases are not supported (*{event.anchor}): write the value out",
                              event.start_mark.line + 1 if event.start_mark else None)


def _refuse_duplicate_keys(path: Path, root: yaml.Node) -> None:
    """Raise ConfigError for the first key that appears twice in one mapping,
    at any depth: YAML loaders silently keep only the last one."""
    stack: list[tuple[str, yaml.Node]] = [("", root)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack.extend((f"{prefix}[{i}]", item) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                name = str(key_node.value)
                dotted = f"{prefix}.{name}" if prefix else name
                line = key_node.start_mark.line + 1
                if name in seen:
                    raise ConfigError(path, dotted, f"duplicate key (first at line {seen[name]}); "
                                      "YAML would silently drop the first one: merge them", line)
                seen[name] = line
                stack.append((dotted, value_node))


class _Validator:
    """Walks the parsed YAML beside its node tree so errors carry line numbers."""

    def __init__(self, path: Path, node: yaml.Node | None, env: Mapping[str, str] | None):
        self.path, self.root, self.env = path, node, env

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, key, message, self._line(key))

    def _line(self, key: str) -> int | None:
        node = self.root
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
            if isinstance(node, yaml.MappingNode):
                match = [v for k, v in node.value if k.value == part]
                if not match:
                    keys = [k for k, _ in node.value if k.value == part]
                    return keys[0].start_mark.line + 1 if keys else node.start_mark.line + 1
                node = match[0]
            elif isinstance(node, yaml.SequenceNode) and part.startswith("["):
                idx = int(part[1:-1])
                if idx >= len(node.value):
                    break
                node = node.value[idx]
            else:
                break
        return node.start_mark.line + 1 if node is not None else None

    def mapping(self, key: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key or "(top level)", f"must be a mapping, got {type(value).__name__}")
        for name in value:
            if name not in allowed:
                full = f"{key}.{name}" if key else str(name)
                raise self.fail(full, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def typed(self, key: str, value: Any, kind: type | tuple[type, ...], minimum: float | None = None,
              maximum: float | None = None) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {want}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if minimum is not None and cast(float, value) < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value!r}")
        if maximum is not None and cast(float, value) > maximum:
            raise self.fail(key, f"must be <= {maximum}, got {value!r}")
        return value

    def section(self, key: str, data: dict[str, Any], cls: type[Any], checks: dict[str, tuple[Any, ...]]) -> Any:
        raw = self.mapping(key, data.get(key, {}) or {}, {f.name for f in fields(cls)})
        values = {name: self.typed(f"{key}.{name}", v, *checks[name]) for name, v in raw.items() if name in checks}
        return cls(**{**values, **{k: v for k, v in raw.items() if k not in checks}})

    def build(self, data: Any) -> Config:
        top = self.mapping("", data, {"state_dir", "repos", "ollama", "watch", "queue", "logging", "search",
                                      "secrets", "team"})
        state_dir = default_state_dir(self.env, self.path)
        if "state_dir" in top:
            state_dir = self.absolute("state_dir", self.typed("state_dir", top["state_dir"], str))
        repos = self.repos(top.get("repos", []) or [])
        config = Config(
            state_dir=state_dir,
            repos=tuple(exclude_owned(r, repos, state_dir) for r in repos),
            ollama=self.ollama(top),
            watch=self.section("watch", top, WatchConfig, {"debounce_ms": (int, 0), "max_file_bytes": (int, 1),
                                                           "max_delay_ms": (int, 0),
                                                           "reconcile_s": ((int, float), 0)}),
            queue=self.section("queue", top, QueueConfig, {"max_attempts": (int, 1)}),
            logging=self.logging(top),
            search=self.search(top),
            secrets=self.secrets(top),
            team=self.team(top),
            source=self.path,
        )
        if not config.repos:
            # Checked last, so a wrong key elsewhere is named first.
            raise self.fail("repos", "at least one repository is required (repos: [{path: ...}])")
        return config

    def repos(self, value: Any) -> tuple[RepoConfig, ...]:
        if not isinstance(value, list):
            raise self.fail("repos", f"must be a list, got {type(value).__name__}")
        out: list[RepoConfig] = []
        for i, item in enumerate(value):
            key = f"repos[{i}]"
            raw = self.mapping(key, item, {"path", "exclude"})
            if "path" not in raw:
                raise self.fail(key, "missing key 'path'")
            raw_path = self.typed(f"{key}.path", raw["path"], str)
            if not raw_path.strip():
                raise self.fail(f"{key}.path", "must not be empty")
            # os.path.realpath, not Path.resolve: a symlink loop is a missing repo, not a RuntimeError.
            path = Path(os.path.realpath(self.absolute(f"{key}.path", raw_path, lexical=False)))
            twin = next((j for j, repo in enumerate(out) if repo.path == path), None)
            if twin is not None:  # two watchers on one tree, its files counted twice
                raise self.fail(f"{key}.path", f"{path} is already listed as repos[{twin}].path")
            # Not checked against the disk: a missing (unmounted, deleted, not
            # yet cloned) or replaced path is reported by the daemon as
            # "degraded: repo missing" and picked up when it is a directory
            # again; refusing the config would stop every other repo too.
            out.append(RepoConfig(path=path, exclude=self.patterns(f"{key}.exclude", raw.get("exclude", []) or [])))
        return tuple(out)

    def absolute(self, key: str, raw: str, lexical: bool = True) -> Path:
        """``raw`` with ``~``/``~user`` expanded, as an absolute path. A relative
        path is taken relative to the directory of the config file itself (a
        symlinked config: its target's), never to each command's working
        directory (``/`` under systemd) nor to the name it was given by, so one
        file means the same paths however it is named. ``lexical``: ``..`` is
        cut from the text (else left for the caller's ``realpath``, which goes
        where the kernel goes through a symlinked directory). An unknown
        ``~user``, a ``$VARIABLE`` anywhere (not expanded: it would silently
        become a directory named ``$VARIABLE``) or a NUL byte is a ConfigError."""
        base = os.path.dirname(os.path.realpath(self.path))
        if "\x00" in raw:
            raise self.fail(key, f"must not contain a NUL character, got {raw!r}")
        if _SHELL_VARIABLE.search(raw):
            raise self.fail(key, f"environment variables are not expanded; write the path itself "
                                 f"(absolute, ~/..., or relative to {base}), got {raw!r}")
        expanded = expand_user(raw)
        if expanded is None:
            raise self.fail(key, f"cannot expand {raw.split('/', 1)[0]!r}: no such user, got {raw!r}")
        joined = os.path.join(base, expanded)
        return Path(os.path.abspath(joined) if lexical else joined)

    def patterns(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise self.fail(key, "must be a list of gitignore-style patterns (strings)")
        for i, pattern in enumerate(value):
            try:
                pathspec.GitIgnoreSpec.from_lines([pattern])
            except (ValueError, re.error) as exc:
                raise self.fail(f"{key}[{i}]", f"invalid gitignore pattern {pattern!r}: {exc}") from exc
        return tuple(value)

    def options(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail("ollama.options", "must be a mapping of Ollama options")
        for name, option in value.items():
            key = f"ollama.options.{name}"
            if name in _INT_OPTIONS:
                self.typed(key, option, int, _INT_OPTIONS[name])
            elif name in _NUMBER_OPTIONS:
                self.typed(key, option, (int, float))
            elif name == "use_mmap" and not isinstance(option, bool):
                raise self.fail(key, f"must be true or false, got {option!r}")
            elif name == "stop" and not (isinstance(option, list) and all(isinstance(x, str) for x in option)):
                raise self.fail(key, "must be a list of strings")
        return value

    def ollama(self, top: dict[str, Any]) -> OllamaConfig:
        checks = {"url": (str,), "model": (str,), "concurrency": (int, 1, MAX_CONCURRENCY),
                  "timeout_s": ((int, float), 1, 86400), "load_timeout_s": ((int, float), 1, 86400)}
        cfg = self.section("ollama", top, OllamaConfig, checks)
        self.check_url("ollama.url", cfg.url)
        given = set((top.get("ollama") or {}))
        if "hosts" in given and given & {"url", "concurrency"}:
            both = sorted(given & {"url", "concurrency"})[0]
            raise self.fail(f"ollama.{both}", "set either ollama.hosts or ollama.url/concurrency, not both")
        if not cfg.model.strip():
            raise self.fail("ollama.model", "must not be empty")
        ka = cfg.keep_alive
        if isinstance(ka, bool) or not isinstance(ka, (int, float, str)):
            raise self.fail("ollama.keep_alive", f"must be seconds (number) or a duration like '15m', got {ka!r}")
        if isinstance(ka, str) and not _GO_DURATION.match(ka.strip()):
            # Ollama answers 400 "time: missing unit in duration" (cases O6).
            raise self.fail("ollama.keep_alive", f"{ka!r} is not a duration: write e.g. '15m', '1h', 300 (seconds) or -1 (forever)")
        self.options(cfg.options)
        if not isinstance(cfg.warm_up, bool):
            raise self.fail("ollama.warm_up", f"must be true or false, got {cfg.warm_up!r}")
        return OllamaConfig(**{**cfg.__dict__, "url": cfg.url.rstrip("/"), "timeout_s": float(cfg.timeout_s),
                               "load_timeout_s": float(cfg.load_timeout_s), "hosts": self.hosts(cfg.hosts)})

    def check_url(self, key: str, url: str) -> None:
        if not re.match(r"^https?://[^/\s]+", url):
            raise self.fail(key, f"must be an http:// or https:// URL, got {url!r}")

    def hosts(self, value: Any) -> tuple[HostConfig, ...]:
        if not isinstance(value, (list, tuple)):
            raise self.fail("ollama.hosts", "must be a list of {url, concurrency}")
        out = []
        for i, item in enumerate(value):
            key = f"ollama.hosts[{i}]"
            if isinstance(item, HostConfig):
                out.append(item)
                continue
            raw = self.mapping(key, item, {"url", "concurrency"})
            if "url" not in raw:
                raise self.fail(key, "missing key 'url'")
            self.check_url(f"{key}.url", self.typed(f"{key}.url", raw["url"], str))
            concurrency = self.typed(f"{key}.concurrency", raw.get("concurrency", 1), int, 1, MAX_CONCURRENCY)
            url = raw["url"].rstrip("/")
            if any(h.url == url for h in out):
                raise self.fail(f"{key}.url", f"{url!r} is listed twice (one server would get double the requests)")
            out.append(HostConfig(url=url, concurrency=concurrency))
        return tuple(out)

    def search(self, top: dict[str, Any]) -> SearchConfig:
        raw = self.mapping("search", top.get("search", {}) or {}, {f.name for f in fields(SearchConfig)})
        model = raw.get("embed_model", DEFAULT_EMBED_MODEL)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise self.fail("search.embed_model", f"must be an Ollama model name or null (no embeddings), got {model!r}")
        return SearchConfig(embed_model=model)

    def team(self, top: dict[str, Any]) -> TeamConfig:
        raw = self.mapping("team", top.get("team", {}) or {}, {f.name for f in fields(TeamConfig)})
        dsn = raw.get("postgres")
        problem = None if dsn is None else check_dsn(dsn)
        if problem:
            raise self.fail("team.postgres", problem)
        lease_s = self.typed("team.lease_s", raw.get("lease_s", TeamConfig.lease_s), (int, float), 1, 86400)
        return TeamConfig(postgres=dsn.strip() if dsn else None, lease_s=float(lease_s))

    def logging(self, top: dict[str, Any]) -> LoggingConfig:
        cfg = self.section("logging", top, LoggingConfig, {"level": (str,), "format": (str,)})
        if cfg.level.lower() not in {"debug", "info", "warning", "error"}:
            raise self.fail("logging.level", f"must be debug, info, warning or error, got {cfg.level!r}")
        if cfg.format not in {"auto", "json", "console"}:
            raise self.fail("logging.format", f"must be auto, json or console, got {cfg.format!r}")
        return LoggingConfig(level=cfg.level.lower(), format=cfg.format)

    def secrets(self, top: dict[str, Any]) -> SecretsConfig:
        raw = self.mapping("secrets", top.get("secrets", {}) or {}, {"allow"})
        allow = raw.get("allow", []) or []
        if not isinstance(allow, list) or not all(isinstance(a, str) and a for a in allow):
            raise self.fail("secrets.allow", "must be a list of fingerprints (sha256 hex) or regexes (strings)")
        for i, entry in enumerate(allow):
            if not is_fingerprint(entry):
                try:
                    re.compile(entry)
                except re.error as exc:
                    raise self.fail(f"secrets.allow[{i}]", f"not a sha256 fingerprint nor a valid regex: {exc}") from exc
        return SecretsConfig(allow=tuple(allow))
