"""Credential files are known by name (never read) or by a head-only look at their keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmc_rag_service.index.ignore import RepoIgnore, is_secret
from llmc_rag_service.index.secret_files import HEAD_BYTES, is_secret_content, secret_file_kind

CANARIES = Path(__file__).resolve().parent / "data" / "canaries"
MANIFEST = json.loads((CANARIES / "manifest.json").read_text())
BY_NAME = [item for item in MANIFEST["secret_files"] if item["by"] == "name"]
BY_CONTENT = [item for item in MANIFEST["secret_files"] if item["by"] == "content"]


def rel(item: dict) -> str:
    """The path inside the canary files tree (the tree the scanner would walk)."""
    return item["file"].removeprefix("files/")


@pytest.mark.parametrize("path, kind", [
    ("ops/service-account.json", "cloud-credentials"),
    ("keys/service-account-prod.json", "cloud-credentials"),
    ("gcp/ci-service-account.json", "cloud-credentials"),
    (".docker/config.json", "docker-config"),
    ("home/me/.docker/config.json", "docker-config"),
    (".kube/config", "kubeconfig"),
    ("deploy/.kube/config", "kubeconfig"),
    ("infra/prod.tfvars", "terraform-vars"),
    ("infra/terraform.tfstate", "terraform-vars"),
    ("deploy/secrets.yaml", "secrets-manifest"),
    ("secrets.yml", "secrets-manifest"),
    ("secrets.prod.yaml", "secrets-manifest"),
    (".pgpass", "database-credentials"),
    (".git-credentials", "git-credentials"),
    ("android/release.keystore", "keystore"),
    ("certs/App.JKS", "keystore"),
    ("vpn/office.ovpn", "openvpn"),
    (".npmrc", "registry-credentials"),
    (".netrc", "netrc"),
    (".aws/credentials", "cloud-credentials"),
    ("credentials.json", "cloud-credentials"),
    (".env.production", "dotenv"),
    ("id_ed25519", "private-key"),
])
def test_secret_file_names_by_kind(path, kind):
    """Each credential file name of the issue is recognised, with its kind."""
    assert secret_file_kind(path) == kind
    assert is_secret(path)


@pytest.mark.parametrize("path", [
    "config.json", "src/docker/config.json", "src/kube/config.py", "secrets.py", "secrets_test.go",
    "kube/config", "service.json", "main.tf", "variables.tf", "README.md", "tokens.py",
])
def test_ordinary_names_are_not_secret_files(path):
    """Names that only resemble credential files are indexed."""
    assert secret_file_kind(path) is None


def test_the_walk_never_lists_a_secret_file_by_name(tmp_path):
    """In a copy of the canary files tree the walk skips every named credential file."""
    root = tmp_path / "repo"
    shutil.copytree(CANARIES / "files", root)
    walked = {path for path, _ in RepoIgnore(root).walk()}
    assert walked.isdisjoint({rel(item) for item in BY_NAME})
    assert {rel(item) for item in BY_CONTENT} <= walked  # these are caught by content


@pytest.mark.parametrize("item", BY_CONTENT, ids=rel)
def test_config_files_whose_keys_name_secrets_are_secret_files(item):
    """JSON/YAML/TOML/INI with a literal private_key, client_secret, password, api_key,
    or a Kubernetes Secret, are secret files; the reason never holds the value."""
    reason = is_secret_content(rel(item), (CANARIES / item["file"]).read_bytes())
    assert reason is not None
    assert item["value"] not in reason


@pytest.mark.parametrize("path", MANIFEST["clean_files"], ids=lambda p: p.removeprefix("files/"))
def test_config_files_that_only_refer_to_secrets_are_indexed(path):
    """``${DB_PASSWORD}``, ``{{ secrets.X }}``, null, ``<s>`` and secret-free configs are no secret files."""
    assert is_secret_content(path.removeprefix("files/"), (CANARIES / path).read_bytes()) is None
    assert secret_file_kind(path.removeprefix("files/")) is None


@pytest.mark.parametrize("head, key", [
    (b'{"web": {"client_secret": "Yr5tE2wQ8uI4oP7aS1dF"}}', "client_secret"),
    (b'db:\n  DB_PASSWORD: "hunter2x"\n', "DB_PASSWORD"),
    (b"[github]\ntoken = ghs_x8Yq2Lm5Nv7Rt3Wz\n", "token"),
    (b"apiKey: 'Jd6hF3kS9wQ2zX7cV5bN'\n", "apiKey"),
    (b"tls:\n  private_key: |\n    MIIEow...\n", "private_key"),
    (b"secret=Pm4nB8vC2xZ6lK9jH3gF\n", "secret"),
])
def test_keys_are_read_in_every_config_syntax(head, key):
    """JSON pairs, YAML mappings (also block scalars), TOML and INI assignments are all read."""
    for suffix in (".json", ".yaml", ".toml", ".ini"):
        reason = is_secret_content(f"conf/app{suffix}", head)
        if reason is not None:
            assert key in reason
            return
    pytest.fail(f"{head!r} not taken for a secret file")


def test_source_code_is_not_judged_by_content():
    """A .py file with a password literal is indexed (its value is redacted instead)."""
    assert is_secret_content("settings.py", b'PASSWORD = "gOIPOZx9eRmm0E"\n') is None


def test_only_the_head_is_looked_at():
    """A secret key after HEAD_BYTES is not seen: the check reads no more than the head."""
    filler = b"# " + b"x" * 78 + b"\n"
    body = filler * (HEAD_BYTES // len(filler) + 1)
    assert is_secret_content("app.yaml", body + b"password: Tq7mZ2xW9pL4vK8sR3nB\n") is None
    assert is_secret_content("app.yaml", b"password: Tq7mZ2xW9pL4vK8sR3nB\n" + body) is not None


def test_a_name_of_several_kinds_gets_the_first_kind_of_the_table_whatever_the_pattern_depth():
    """secret_file_kind matches one regex per pattern depth (it runs for every path of every scan); where a
    name fits patterns of several kinds, the kind listed first in SECRET_FILES wins, as one pattern at a
    time in table order would give."""
    assert secret_file_kind("deploy/.env.pem") == "dotenv"  # dotenv ".env.*" before private-key "*.pem"
    assert secret_file_kind("x/.kube/config") == "kubeconfig"  # a two-component pattern
    assert secret_file_kind("x/.docker/credentials.json") == "cloud-credentials"  # before docker-config's depth 2
    assert secret_file_kind("A/.DOCKER/CONFIG.JSON") == "docker-config"
    assert secret_file_kind("pkg/mod/config.json") is None and secret_file_kind("main.py") is None
