"""Settings from the environment: PSYCOPOOL_DJANGO_{HOST,PORT,USER,NAME,APP_NAME,DRIVER}."""

import os
import sys

if os.environ.get("PSYCOPOOL_DJANGO_DRIVER") == "psycopg2":
    # Django's backend uses psycopg 3 whenever it can be imported: hide it.
    sys.modules["psycopg"] = None  # type: ignore[assignment]

SECRET_KEY = "psycopool-test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shop.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
POOL_MAX = 3
DATABASES = {
    "default": {
        "ENGINE": "psycopool.django",
        "NAME": os.environ.get("PSYCOPOOL_DJANGO_NAME", "psycopool_django"),
        "USER": os.environ.get("PSYCOPOOL_DJANGO_USER", "postgres"),
        "HOST": os.environ.get("PSYCOPOOL_DJANGO_HOST", "127.0.0.1"),
        "PORT": os.environ.get("PSYCOPOOL_DJANGO_PORT", "5432"),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {
            "application_name": os.environ.get("PSYCOPOOL_DJANGO_APP_NAME", "psycopool-django"),
            "pool": {"min_size": 1, "max_size": POOL_MAX, "timeout": 10.0},
        },
    }
}
