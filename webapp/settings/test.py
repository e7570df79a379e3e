"""Tests: the local stack, fast hashing, tasks run inline unless a test starts a worker."""
from webapp.settings.base import *  # noqa: F401,F403
from webapp.settings.base import env

DEBUG = False
SECRET_KEY = "test-only-insecure-key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
