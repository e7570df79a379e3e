"""Settings shared by every environment. ``local``, ``test`` and ``production`` build on these."""
from pathlib import Path

from webapp.env import BASE_DIR, DATA_DIR, database_config, env

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "annotate",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before whitenoise, so that static files get the policy too (webapp/settings/security.py).
    "webapp.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # A NUL in the path, the query or a form is a 400 naming it, before any view (webapp/middleware.py).
    "webapp.middleware.NullCharacterMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # /healthz for load balancers, before the Host header is checked (webapp/middleware.py).
    "webapp.middleware.HealthzMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who is asking, for the audit log of the services a view calls (annotate/audit.py).
    "annotate.audit.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A database that is down or restarting answers 503 (webapp/middleware.py).
    "webapp.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "annotate.context_processors.roles",
            ],
        },
    },
]

DATABASES = {"default": database_config(DATA_DIR / "db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The first refuses sign-ins after too many failures (annotate/ratelimit.py) and authenticates no
# one; the model backend checks the password.
AUTHENTICATION_BACKENDS = ["annotate.ratelimit.SignInThrottle", "django.contrib.auth.backends.ModelBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(DATA_DIR / "static"))
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request otherwise
STATICFILES_DIRS = [BASE_DIR / "static"]
# Served by whitenoise from the finders until collectstatic has run (local, tests).
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        # DRF's TokenAuthentication in one statement (the annotator endpoints use it too): one
        # token scheme, so the schema documents one.
        "annotate.authentication.FastTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's JSON parser, refusing deep nesting and NUL characters with a 400 (annotate/parsers.py).
    "DEFAULT_PARSER_CLASSES": ["annotate.parsers.SafeJSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Calibra API",
    "DESCRIPTION": "Studies (researchers), next item and submit (annotators), judgment export.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the project's own static files: no network needed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Three models have a "status": each enum named after its model.
    "ENUM_NAME_OVERRIDES": {
        "WorkerJobStatusEnum": "annotate.models.WorkerJob.Status",
        "StudyStatusEnum": "annotate.models.Study.Status",
        "ReportStatusEnum": "annotate.models.Report.Status",
    },
}

# Where checkpoints and image folders may be read from (import_tia2 --images, checkpoint
# locations). Empty means "anywhere" in the embedded mode; production sets it.
CALIBRA_ALLOWED_INPUT_ROOTS = env.list("CALIBRA_ALLOWED_INPUT_ROOTS", default=[])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

from webapp.settings.celery import *  # noqa: E402,F401,F403
from webapp.settings.storage import *  # noqa: E402,F401,F403
from webapp.settings.security import *  # noqa: E402,F401,F403

# GPU workers (read by workers/jobs.py; a checkpoint's config.batch_size overrides the batch).
CALIBRA_GENERATION_BATCH_SIZE = env.int("CALIBRA_GENERATION_BATCH_SIZE", default=8)
CALIBRA_GENERATION_CHUNK_SIZE = env.int("CALIBRA_GENERATION_CHUNK_SIZE", default=256)
# torch.compile of the UNet, once per checkpoint and worker: unset follows the checkpoint's
# config.compile; "1"/"0" forces it on or off for this worker.
CALIBRA_GENERATION_COMPILE = env.bool("CALIBRA_GENERATION_COMPILE") if env.str("CALIBRA_GENERATION_COMPILE", "") else None
CALIBRA_ENCODE_THREADS = env.int("CALIBRA_ENCODE_THREADS", default=2)
# Uploads (annotate/services/uploads.py) and CSV prompt imports (prompt_import.py): larger
# files are refused with 413 before they are read, bigger images before they are decoded.
CALIBRA_UPLOAD_MAX_BYTES = env.int("CALIBRA_UPLOAD_MAX_BYTES", default=20 * 1024 * 1024)
CALIBRA_UPLOAD_MAX_PIXELS = env.int("CALIBRA_UPLOAD_MAX_PIXELS", default=50_000_000)
CALIBRA_PROMPT_IMPORT_MAX_ROWS = env.int("CALIBRA_PROMPT_IMPORT_MAX_ROWS", default=100_000)
CALIBRA_PROMPT_IMPORT_MAX_BYTES = env.int("CALIBRA_PROMPT_IMPORT_MAX_BYTES", default=10 * 1024 * 1024)

# A cache that the web processes and the workers share: computed pages (the reward models
# against TIA2's labels) are built by a worker and read by any web process. Redis where the
# broker is Redis; a folder under the data directory in the embedded mode.
#
# "ratelimit" holds the rate limits' counters (annotate/ratelimit.py), which every web process must
# share: the same Redis, with short timeouts, since the limits fail open and a Redis that does
# not answer must not hold up a submission. In the embedded mode (one web process) they are
# kept in memory: the file cache would write a file on every judgment.
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):  # noqa: F405
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": env.str("CACHE_URL", default=CELERY_BROKER_URL),  # noqa: F405
                          "KEY_PREFIX": "calibra"},
              "ratelimit": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                            "LOCATION": env.str("CACHE_URL", default=CELERY_BROKER_URL),  # noqa: F405
                            "KEY_PREFIX": "calibra-rl",
                            "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.25}}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                          "LOCATION": env.str("CACHE_URL", default=str(DATA_DIR / "cache")), "KEY_PREFIX": "calibra"},
              "ratelimit": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "calibra-rl"}}
