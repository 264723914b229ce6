"""API clients of the demo shop (canary corpus: every secret here is fake)."""

import json
import urllib.request

GITHUB_TOKEN = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"
OAUTH_TOKEN = "gho_EMfAdggcG9qpVTzqA05MFsHl7UeioEJP2NNe"

SIGNING_KEY_PEM = """
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEINZj4R4P5PNvmit09gQtOST1HR0CU+01cQt8IvKNkMXXoAoGCCqGSM49
AwEHoUQDQgAEQj30kb2+cPlk6SmB4sUsA/ulUcdBE4Tx0P49ZVWgqibV5rwot/o2
ZceHl4beaxiMfsSAQM9F5TyIFrVyAHrgcw==
-----END EC PRIVATE KEY-----
"""

GCP_SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "shop-prod-4471",
    "private_key_id": "f3f386d0cd566647b5aa666347428c3dd46c036b",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIEFdKatkjrt1Q2Hz2z17I0uWoiEJJOOVGzwjphwIBFKz\n-----END PRIVATE KEY-----\n",
    "client_email": "shop-api@shop-prod-4471.iam.gserviceaccount.com",
}


class GitHubClient:
    """A tiny GitHub REST client."""

    def __init__(self, token: str = GITHUB_TOKEN) -> None:
        self.token = token
        self.base = "https://api.github.com"

    def repo(self, owner: str, name: str) -> dict:
        """One repository as JSON."""
        request = urllib.request.Request(f"{self.base}/repos/{owner}/{name}")
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)


def deploy_client():
    """A client for the deploy bot, with a fine-grained token."""
    token = "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"
    return GitHubClient(token)


def internal_session():
    """Headers for the internal admin API (a long-lived JWT)."""
    return {
        "Authorization": "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzdmMtY2FuYXJ5LTc3MzEiLCJyb2xlIjoiYWRtaW4iLCJpYXQiOjE3NjcyMjU2MDB9.UvImZaYMEtKJGF2VDuiBNgkWb2sRPReNbA_TkB_yOaE",
        "Accept": "application/json",
    }


def connect_reporting(psycopg):
    """Open the reporting database."""
    return psycopg.connect(host="reports.internal", user="reporter", password="Vq3LmT8zRw2Xk9Pd")


def upload(data: bytes, name: str) -> str:
    """Uploads bytes and returns the object's name."""
    api_key = "AIzaSyB4kX2mQ9vT7rW1pL8nZ3cF6hJ0dS5aGyE"
    url = f"https://storage.example.com/upload?key={api_key}&name={name}"
    urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=30)
    return name
