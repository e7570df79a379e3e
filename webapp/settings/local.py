"""The embedded mode: SQLite, file-system broker, local media, DEBUG on unless told otherwise."""
from webapp.settings.base import *  # noqa: F401,F403
from webapp.settings.base import env

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="local-only-insecure-key-do-not-deploy")
