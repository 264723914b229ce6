"""Django-style settings of a demo shop (canary corpus: every secret here is fake)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "#yb8c7z8!h5f-ke830zrp45iv147ugm0%bqi-bcmjoa(su=wp%"

DEBUG = os.environ.get("SHOP_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["shop.example.com", "localhost"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "shop_app",
        "PASSWORD": "gOIPOZx9eRmm0E",
        "HOST": "db.internal",
        "PORT": 5432,
    }
}

DATABASE_URL = "postgres://shop_app:qlTaWEITclor@db.internal:5432/shop"
CACHE_URL = "redis://:XwIS8HGNWkz2YS5o@cache.internal:6379/0"

AWS_ACCESS_KEY_ID = "AKIAQWB5PDKHX6PYGPAN"
AWS_SECRET_ACCESS_KEY = "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"
AWS_STORAGE_BUCKET_NAME = "shop-media"

STRIPE_SECRET_KEY = "sk_live_1AyOHFRuT11NCue1cr3McRTr"
STRIPE_RESTRICTED_KEY = "rk_live_KwtPYKbPizDmbX1rpXjYdOhC"
SLACK_BOT_TOKEN = "xoxb-079096690911-1146569777818-WGbtMfEbo9ShFXNQ6Fq5axtj"
SLACK_WEBHOOK = "https://hooks.slack.com/services/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"
SENDGRID_API_KEY = "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"
WEBHOOK_SIGNING_SECRET = "2dc4ee60caea63367c29a80b21ead8f062d15a4f4ef27e95"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "shop.orders",
]


def media_url(name: str) -> str:
    """Public URL of an uploaded file."""
    return f"https://{AWS_STORAGE_BUCKET_NAME}.s3.amazonaws.com/{name}"


def database_settings(env: dict) -> dict:
    """The DATABASES entry, with the password read from the environment."""
    settings = dict(DATABASES["default"])
    settings["PASSWORD"] = env.get("SHOP_DB_PASSWORD", "")
    return settings
