"""Production: PostgreSQL, Redis, object storage or a shared volume, behind HTTPS."""
from webapp.settings.base import *  # noqa: F401,F403
from webapp.settings.base import STORAGES, env
from webapp.settings.security import trusted_proxies

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY")  # required: no default

# Behind a TLS-terminating reverse proxy, which sets X-Forwarded-Proto (and must overwrite a
# client's) and appends the client's address to X-Forwarded-For: by default on this host's
# loopback (docker-compose.yml names the containers' networks too).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CALIBRA_TRUSTED_PROXIES = trusted_proxies(default=["127.0.0.1", "::1"])
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# Load balancers' health checks may come over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
# A year, subdomains included, eligible for the browsers' preload list (submitting the domain
# there is a separate, manual step). Lower SECURE_HSTS_SECONDS while trying out a new domain.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
# X-Frame-Options, nosniff, Referrer-Policy and the Content-Security-Policy: security.py (every
# environment). The CSRF cookie stays readable by scripts: annotate.js sends it as X-CSRFToken.

# A connection the database dropped (a restart) is noticed before a request uses it.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=True)  # noqa: F405

STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
