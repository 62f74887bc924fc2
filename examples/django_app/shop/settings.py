"""One database for Django's tables and unbroken's jobs: a job enqueued on Django's connection
commits or rolls back with the view's transaction."""

import os

from psycopg.conninfo import conninfo_to_dict

_url = os.environ.get("UNBROKEN_DATABASE_URL") or os.environ["DATABASE_URL"]
_db = conninfo_to_dict(_url)

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3, as unbroken uses
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example only: set DJANGO_SECRET_KEY")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["shop"]
ROOT_URLCONF = "shop.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
