"""Media through Django's storage API: a local folder, or S3-compatible object storage."""
from webapp.env import DATA_DIR, env

MEDIA_URL = "/media/"
MEDIA_ROOT = env.str("MEDIA_ROOT", default=str(DATA_DIR / "media"))
MEDIA_STORAGE = env.str("MEDIA_STORAGE", default="local")
# The HMAC key that names generated images (images/<hash>.jpg): the same name for the same
# checkpoint, prompt, seed and index on every worker, yet none of them readable from it.
# Empty: derived from SECRET_KEY. Every worker needs the same value (annotate/media.py).
CALIBRA_MEDIA_NAME_KEY = env.str("CALIBRA_MEDIA_NAME_KEY", default="")

# Origins that media URLs (``FieldFile.url``) point at, for the Content-Security-Policy's
# img-src: none with local storage (same origin).
MEDIA_ORIGINS: list[str] = []

if MEDIA_STORAGE == "s3":
    # GPU workers on other machines write images where the web server can read them. The
    # bucket stays private (no ACL is set on objects): a URL made by ``.url`` is signed and
    # expires after an hour. Annotators never get one: their images come through
    # annotate_image, which checks their lease.
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "file_overwrite": True,
            "querystring_auth": True,
            "querystring_expire": 3600,
            "default_acl": None,
        },
    }
    _endpoint = _default_storage["OPTIONS"]["endpoint_url"]
    MEDIA_ORIGINS = ["/".join(_endpoint.split("/")[:3])] if _endpoint else ["https://*.amazonaws.com"]
elif MEDIA_STORAGE == "local":
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "base_url": MEDIA_URL},
    }
else:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"MEDIA_STORAGE must be 'local' or 's3', not {MEDIA_STORAGE!r}")

STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
