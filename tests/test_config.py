"""Config loading and validation (DESIGN.md "Contract: config")."""

from pathlib import Path

import pytest

from llmc_rag_service import config as config_mod
from llmc_rag_service.config import ConfigError, default_state_dir, find_config_path, load_config, locate_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    """A config file of ``text``, plus one repo when ``text`` names none (repos are required)."""
    path = tmp_path / "config.yaml"
    path.write_text(text if "repos" in text else f"repos:\n  - path: {tmp_path}\n{text}")
    return path


def test_sample_config_is_valid_and_documents_every_key(tmp_path, monkeypatch):
    """The shipped etc/llmc-rag.yaml loads (with its repo path present) and sets every key."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "src" / "project").mkdir(parents=True)
    cfg = load_config(ROOT / "etc" / "llmc-rag.yaml")
    assert cfg.repos[0].path == (tmp_path / "src" / "project").resolve()
    assert cfg.repos[0].exclude == ("vendor/**", "*.min.js")
    assert cfg.ollama.keep_alive == "15m"
    assert cfg.ollama.options == {"temperature": 0.2, "num_ctx": 8192}
    text = (ROOT / "etc" / "llmc-rag.yaml").read_text()
    for key in ("state_dir", "url", "model", "keep_alive", "concurrency", "timeout_s", "options",
                "debounce_ms", "max_file_bytes", "max_attempts", "level", "format", "load_timeout_s",
                "hosts", "max_delay_ms", "reconcile_s", "warm_up", "embed_model", "postgres", "lease_s",
                "allow"):
        assert f"{key}:" in text


def test_unknown_key_names_the_key_path_file_and_line(tmp_path):
    """An unknown key is refused with its dotted path, the file and its line."""
    path = write(tmp_path, "ollama:\n  model: m\n  concurency: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "ollama.concurency"
    assert err.value.line == 5
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ("watch:\n  debounce_ms: fast\n", "watch.debounce_ms"),
        ("watch:\n  max_file_bytes: 0\n", "watch.max_file_bytes"),
        ("queue:\n  max_attempts: true\n", "queue.max_attempts"),
        ("ollama:\n  concurrency: 0\n", "ollama.concurrency"),
        ("ollama:\n  keep_alive: '300'\n", "ollama.keep_alive"),
        ("ollama:\n  keep_alive: true\n", "ollama.keep_alive"),
        ("ollama:\n  url: localhost:11434\n", "ollama.url"),
        ("ollama:\n  options: [1]\n", "ollama.options"),
        ("logging:\n  level: loud\n", "logging.level"),
        ("logging:\n  format: xml\n", "logging.format"),
        ("repos:\n  - exclude: []\n", "repos[0]"),
        ("repos: {path: /tmp}\n", "repos"),
        ("bogus: 1\n", "bogus"),
        ("repos:\n  - path: ''\n", "repos[0].path"),
        ("repos:\n  - path: /tmp\n    exclude: ['ok', '[z-a]']\n", "repos[0].exclude[1]"),
        ("ollama:\n  options: {num_ctx: abc}\n", "ollama.options.num_ctx"),
        ("ollama:\n  options: {num_predict: lots}\n", "ollama.options.num_predict"),
        ("ollama:\n  options: {num_predict: -1}\n", "ollama.options.num_predict"),
        ("ollama:\n  options: {temperature: hot}\n", "ollama.options.temperature"),
        ("ollama:\n  options: {use_mmap: 1}\n", "ollama.options.use_mmap"),
        ("ollama:\n  timeout_s: .nan\n", "ollama.timeout_s"),
        ("ollama:\n  warm_up: 1\n", "ollama.warm_up"),
        ("ollama:\n  concurrency: 100000\n", "ollama.concurrency"),
    ],
)
def test_wrong_values_are_refused_with_their_key(tmp_path, text, key):
    """Each wrong type or value is refused, naming its key."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.key == key
    assert key in str(err.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    """Broken YAML is a ConfigError with the line of the problem."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "ollama:\n  model: [unclosed\n  url: x\n"))
    assert err.value.line is not None


def test_keep_alive_keeps_its_type(tmp_path):
    """A number stays a number and a duration stays a string."""
    assert load_config(write(tmp_path, "ollama:\n  keep_alive: -1\n")).ollama.keep_alive == -1
    assert load_config(write(tmp_path, "ollama:\n  keep_alive: 1h30m\n")).ollama.keep_alive == "1h30m"
    assert load_config(write(tmp_path, "ollama:\n  keep_alive: 300\n")).ollama.keep_alive == 300


def test_state_dir_defaults_follow_systemd_then_xdg(tmp_path):
    """$STATE_DIRECTORY wins, then $XDG_STATE_HOME."""
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/llmc-rag"}) == Path("/var/lib/llmc-rag")
    assert default_state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/llmc-rag")
    assert default_state_dir({"XDG_STATE_HOME": "/x"}, tmp_path / "config.yaml") == Path("/x/llmc-rag")


def test_the_system_config_reads_the_system_service_store(tmp_path, monkeypatch):
    """With /etc/llmc-rag/config.yaml and no state_dir, every command uses /var/lib/llmc-rag (the
    unit's StateDirectory=), whoever runs it; $STATE_DIRECTORY still wins; state_dir in the file wins over all."""
    env = {"XDG_STATE_HOME": "/home/u/.local/state"}
    assert default_state_dir(env, "/etc/llmc-rag/config.yaml") == Path("/var/lib/llmc-rag")
    assert default_state_dir(env, "/etc/llmc-rag/../llmc-rag/config.yaml") == Path("/var/lib/llmc-rag")
    assert default_state_dir({**env, "STATE_DIRECTORY": "/srv/s"}, "/etc/llmc-rag/config.yaml") == Path("/srv/s")
    system = write(tmp_path, "ollama: {model: m}\n")
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", system)
    assert load_config(system, env=env).state_dir == Path("/var/lib/llmc-rag")
    system.write_text(system.read_text() + f"state_dir: {tmp_path / 'own'}\n")
    assert load_config(system, env=env).state_dir == tmp_path / "own"


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("ollama:\n  model: a\nrepos:\n  - path: /tmp\nollama:\n  url: http://x:1\n", "ollama", 5),
        ("repos:\n  - path: /tmp\nollama:\n  model: a\n  url: http://x:1\n  model: b\n", "ollama.model", 6),
        ("repos:\n  - path: /tmp\n    exclude: []\n    path: /srv\n", "repos[0].path", 4),
        ("repos:\n  - path: /tmp\nollama:\n  options: {num_ctx: 4096, num_ctx: 8192}\n",
         "ollama.options.num_ctx", 4),
    ],
)
def test_a_duplicate_key_at_any_level_is_refused(tmp_path, text, key, line):
    """A key given twice in one mapping (YAML would keep only the last) is an error naming file, line and key."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.key, err.value.line) == (key, line)
    assert f"{path}:{line}: {key}: duplicate key" in str(err.value)


@pytest.mark.parametrize(
    "text, line",
    [("", 1), ("# only a comment\n", 1), ("repos: []\n", 1), ("ollama: {model: m}\n", 1),
     ("ollama: {model: m}\nrepos:\n", 2)],
)
def test_an_empty_config_or_no_repos_is_refused(tmp_path, text, line):
    """An empty file, `repos: []`, a missing or empty repos are errors naming the file, the line and `repos`."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.key, err.value.line) == ("repos", line)
    assert str(err.value).startswith(f"{path}:{line}: repos: ")


def test_search_embed_model_defaults_and_can_be_turned_off(tmp_path):
    """search.embed_model: nomic-embed-text by default, null turns embeddings off, a non-name is refused."""
    assert load_config(write(tmp_path, "")).search.embed_model == "nomic-embed-text"
    assert load_config(write(tmp_path, "search: {embed_model: mxbai-embed-large}\n")).search.embed_model == \
        "mxbai-embed-large"
    assert load_config(write(tmp_path, "search:\n  embed_model: null\n")).search.embed_model is None
    for bad in ("''", "3", "[a]"):
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path, f"search:\n  embed_model: {bad}\n"))
        assert err.value.key == "search.embed_model" and err.value.line == 4
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "search:\n  model: x\n"))
    assert err.value.key == "search.model"
    cfg = load_config(write(tmp_path, "state_dir: ~/st\n"), env={})
    assert cfg.db_path == Path.home() / "st" / "llmc-rag.db"


def test_config_lookup_order(tmp_path):
    """-c, then $LLMC_RAG_CONFIG, then the XDG user file, then /etc."""
    assert find_config_path("a.yaml", {"LLMC_RAG_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert find_config_path(None, {"LLMC_RAG_CONFIG": "b.yaml"}) == Path("b.yaml")
    user = tmp_path / "llmc-rag" / "config.yaml"
    user.parent.mkdir()
    user.write_text("{}")
    assert find_config_path(None, {"XDG_CONFIG_HOME": str(tmp_path)}) == user
    assert find_config_path(None, {"XDG_CONFIG_HOME": str(tmp_path / "none")}) == Path("/etc/llmc-rag/config.yaml")


def test_missing_file_is_a_config_error(tmp_path):
    """A config file that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_a_missing_dash_c_file_says_how_to_create_it_or_drop_c(tmp_path):
    """-c naming no file: one line naming it, the cp of the shipped sample and 'drop -c'."""
    missing = tmp_path / "conf" / "mine.yaml"
    with pytest.raises(ConfigError) as err:
        locate_config(str(missing), {})
    text = str(err.value)
    assert text.startswith(f"{missing}: no such file; create it from the commented sample: ")
    assert f"mkdir -p {missing.parent} && cp {ROOT / 'etc' / 'llmc-rag.yaml'} {missing}" in text
    assert "drop -c to use the default" in text and "\n" not in text


def test_a_missing_env_config_says_to_unset_it(tmp_path):
    """$LLMC_RAG_CONFIG naming no file: the advice is to create it or unset the variable."""
    with pytest.raises(ConfigError, match="unset LLMC_RAG_CONFIG to use the default"):
        locate_config(None, {"LLMC_RAG_CONFIG": str(tmp_path / "x.yaml")})


@pytest.mark.parametrize("root", [False, True])
def test_no_config_names_first_the_file_this_user_would_create(tmp_path, root):
    """With no config anywhere, a user's error names their own config file first; root's names /etc's."""
    if Path("/etc/llmc-rag/config.yaml").exists():
        pytest.fail("this machine has /etc/llmc-rag/config.yaml; the test needs none")
    user = tmp_path / "llmc-rag" / "config.yaml"
    with pytest.raises(ConfigError) as err:
        locate_config(None, {"XDG_CONFIG_HOME": str(tmp_path)}, root=root)
    first, other = (Path("/etc/llmc-rag/config.yaml"), user) if root else (user, Path("/etc/llmc-rag/config.yaml"))
    assert str(err.value).startswith(f"{first}: no config file found here, nor at {other}")
    assert f"cp {ROOT / 'etc' / 'llmc-rag.yaml'}" in str(err.value)
    assert ("scripts/install.sh" in str(err.value)) is root


def test_an_existing_config_is_located(tmp_path):
    path = write(tmp_path, "")
    assert locate_config(str(path), {}) == path


def test_hosts_list_and_single_host_form(tmp_path):
    """ollama.hosts gives several servers; without it, url+concurrency is the one host."""
    cfg = load_config(write(tmp_path, "ollama:\n  hosts:\n    - {url: 'http://a:1', concurrency: 2}\n    - {url: 'http://b:2/'}\n"))
    assert [(h.url, h.concurrency) for h in cfg.ollama.all_hosts()] == [("http://a:1", 2), ("http://b:2", 1)]
    single = load_config(write(tmp_path, "ollama:\n  url: http://x:3\n  concurrency: 4\n"))
    assert [(h.url, h.concurrency) for h in single.ollama.all_hosts()] == [("http://x:3", 4)]
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "ollama:\n  hosts:\n    - {url: 'http://a:1', concurrency: 0}\n"))
    assert err.value.key == "ollama.hosts[0].concurrency" and err.value.line == 5


def test_hosts_together_with_url_is_refused(tmp_path):
    """ollama.hosts and ollama.url together are ambiguous: refused, naming url."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "ollama:\n  url: http://x:1\n  hosts:\n    - {url: 'http://a:1'}\n"))
    assert err.value.key == "ollama.url" and err.value.line == 4


def test_a_host_listed_twice_is_refused(tmp_path):
    """The same server twice in ollama.hosts (even with a trailing slash) is refused."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "ollama:\n  hosts:\n    - {url: 'http://h:9'}\n    - {url: 'http://h:9/'}\n"))
    assert err.value.key == "ollama.hosts[1].url"


def test_team_postgres_is_off_by_default_and_takes_a_dsn_in_either_form(tmp_path):
    """No team section: team mode off. A URL or key/value DSN is kept as written; lease_s is seconds."""
    assert load_config(write(tmp_path, "")).team == config_mod.TeamConfig(postgres=None, lease_s=120.0)
    url = "postgresql://llmc@db.internal:5432/llmc?sslmode=verify-full"
    assert load_config(write(tmp_path, f"team:\n  postgres: '{url}'\n  lease_s: 30\n")).team.postgres == url
    kv = "host=db.internal dbname=llmc user=llmc sslmode=require"
    cfg = load_config(write(tmp_path, f"team:\n  postgres: '{kv}'\n"))
    assert cfg.team.postgres == kv and cfg.team.lease_s == 120.0
    assert load_config(write(tmp_path, "team:\n  postgres: null\n")).team.postgres is None


@pytest.mark.parametrize("text, message", [
    ("team:\n  postgres: 'mysql://db/llmc'\n", "postgresql://"),
    ("team:\n  postgres: ''\n", "must be a PostgreSQL DSN"),
    ("team:\n  postgres: 5432\n", "must be a PostgreSQL DSN"),
    ("team:\n  postgres: 'just words'\n", "not a DSN"),
    ("team:\n  lease_s: 0\n", "must be >= 1"),
    ("team:\n  pg: x\n", "unknown key"),
])
def test_a_bad_team_section_names_the_key(tmp_path, text, message):
    """A wrong team.postgres (scheme, empty, a number, no key=value) or lease_s is refused with its key and line."""
    with pytest.raises(ConfigError, match=message) as err:
        load_config(write(tmp_path, text))
    assert err.value.key.startswith("team.") and err.value.line == 4


def test_a_password_in_a_bad_dsn_is_not_repeated(tmp_path):
    """The error for a DSN with a password shows the DSN redacted."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "team:\n  postgres: 'postgresql:///llmc?password=s3cret'\n"))
    assert "s3cret" not in str(err.value)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text, expect", [
    ("a: &a [*a]\n", "YAML aliases are not supported (*a)"),
    ("repos: [1,2\n", "invalid YAML"),
])
def test_self_referencing_aliases_and_syntax_errors_are_one_line(tmp_path, text, expect):
    """A recursive alias is refused at once (it used to hang every command); YAML errors are one line."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expect in str(err.value) and "\n" not in str(err.value)


# -- paths from outside: relative, ~user, NUL, twice, loops, the store inside a repo --------------

@pytest.mark.parametrize(("text", "key", "said"), [
    ("repos:\n  - path: $HOME/src\n", "repos[0].path", "environment variables are not expanded"),
    ("repos:\n  - path: ~nosuchuser-llmc/src\n", "repos[0].path", "cannot expand '~nosuchuser-llmc': no such user"),
    ("state_dir: ~nosuchuser-llmc/s\nrepos:\n  - path: /srv\n", "state_dir", "no such user"),
    ('repos:\n  - path: "/srv/a\\0b"\n', "repos[0].path", "must not contain a NUL character"),
])
def test_a_path_no_directory_can_have_is_refused(tmp_path, text, key, said):
    """An unknown ~user, a $VARIABLE (not expanded: it would name a directory called
    "$HOME") or a NUL byte is refused naming the key, in one line."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f": {key}: " in str(err.value) and said in str(err.value)
    assert "\n" not in str(err.value)


def test_relative_paths_are_relative_to_the_config_file_not_the_working_directory(tmp_path, monkeypatch):
    """A relative state_dir or repo path names the same directory whatever directory a
    command runs in (/ under systemd): it is taken relative to the config file's directory."""
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "config.yaml"
    path.write_text("state_dir: state\nrepos:\n  - path: ../src/app\n  - path: ./lib\n")
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.state_dir == conf_dir / "state"
    assert [r.path for r in config.repos] == [tmp_path / "src" / "app", conf_dir / "lib"]


def test_a_repo_listed_twice_under_two_spellings_is_refused(tmp_path):
    """`/x` and `/x/` (or a symlink to it) are one tree: watched twice and counted twice, so refused."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "repo")
    for second in (f"{tmp_path}/repo/", f"{tmp_path}/alias"):
        path = tmp_path / "config.yaml"
        path.write_text(f"repos:\n  - path: {tmp_path}/repo\n  - path: {second}\n")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert f"config.yaml:3: repos[1].path: {tmp_path / 'repo'} is already listed as repos[0].path" in str(err.value)


def test_a_repo_path_that_is_a_symlink_loop_loads_as_a_missing_repo(tmp_path):
    """A symlink loop at a repo's path is no RuntimeError traceback: the path loads, and is no directory."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    cfg = load_config(write(tmp_path, f"repos:\n  - path: {tmp_path}/a\n"))
    assert not cfg.repos[0].path.is_dir()


def test_a_state_dir_inside_a_repo_is_excluded_from_it(tmp_path):
    """The store's own files are never indexed (each commit's WAL write would be a file event that
    writes the store again, forever): the state dir inside a repo, or the store files at its root."""
    from llmc_rag_service.index.ignore import RepoIgnore

    repo = tmp_path / "my repo"
    (repo / "st[1]").mkdir(parents=True)
    for state, ignored, kept in ((repo / "st[1]", "st[1]/llmc-rag.db-wal", "st1/llmc-rag.db-wal"),
                                 (repo, "llmc-rag.db-wal", "src/llmc-rag.db-wal")):
        cfg = load_config(write(tmp_path, f"state_dir: {state}\nrepos:\n  - path: {repo}\n    exclude: ['*.log']\n"))
        ignore = RepoIgnore(cfg.repos[0].path, cfg.repos[0].exclude)
        assert ignore.is_ignored(ignored) and ignore.is_ignored("x.log")
        assert not ignore.is_ignored(kept) and not ignore.is_ignored("a.py")
    cfg = load_config(write(tmp_path, f"state_dir: {tmp_path}/state\nrepos:\n  - path: {repo}\n"))
    assert cfg.repos[0].exclude == ()


def test_a_repo_inside_another_is_excluded_from_the_outer_one(tmp_path):
    """A repo listed inside another is indexed by its own entry only (with its own excludes):
    the outer one excludes it, so no file is stored, searched or counted twice."""
    from llmc_rag_service.index.ignore import RepoIgnore

    outer, inner = tmp_path / "mono", tmp_path / "mono" / "libs" / "a b"
    inner.mkdir(parents=True)
    cfg = load_config(write(tmp_path, f"state_dir: {tmp_path}/state\nrepos:\n  - path: {outer}\n  - path: {inner}\n"))
    ignore = RepoIgnore(cfg.repos[0].path, cfg.repos[0].exclude)
    assert ignore.is_ignored("libs/a b/x.py") and not ignore.is_ignored("libs/ab/x.py")
    assert cfg.repos[1].exclude == ()


def test_a_symlinked_config_means_the_same_paths_under_either_name(tmp_path):
    """~/.config/llmc-rag/config.yaml linked to a dotfiles copy, a service given one name and
    a person the other: relative paths are taken from the file itself (the link's target's
    directory), so both open one store and watch one tree."""
    real = tmp_path / "dotfiles" / "llmc"
    real.mkdir(parents=True)
    (real / "config.yaml").write_text("state_dir: state\nrepos:\n  - path: ../src\n")
    (tmp_path / "etc" / "deep").mkdir(parents=True)
    link = tmp_path / "etc" / "deep" / "config.yaml"
    link.symlink_to(real / "config.yaml")
    by_link, by_target = load_config(link), load_config(real / "config.yaml")
    assert by_link.state_dir == by_target.state_dir == real / "state"
    assert [r.path for r in by_link.repos] == [r.path for r in by_target.repos] == [tmp_path / "dotfiles" / "src"]


def test_a_variable_inside_a_path_is_refused_too(tmp_path):
    """`~/src/$PROJECT` would be a directory named "$PROJECT" (a repo missing for good): refused like a leading one."""
    path = write(tmp_path, "repos:\n  - path: ~/src/${PROJECT}\n  - path: /srv/$NAME/x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert ": repos[0].path: environment variables are not expanded" in str(err.value)
