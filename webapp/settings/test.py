"""Tests: the local stack, fast hashing, tasks run inline unless a test starts a worker."""
from webapp.settings.base import *  # noqa: F401,F403
from webapp.settings.base import DATA_DIR, env
from webapp.settings.celery import filesystem_broker_options

DEBUG = False
SECRET_KEY = "test-only-insecure-key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)

# A file, not memory, so that a worker process started by a test sees the test database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}  # noqa: F405

# Tests get their own broker folder, so that they never touch a running demo's queue.
if CELERY_BROKER_URL.startswith("filesystem://"):  # noqa: F405
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(DATA_DIR / "test-broker")

# Each test process its own cache (tasks run inline, in the same process).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
          "ratelimit": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "calibra-rl"}}
