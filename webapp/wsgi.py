import codecs
import os

from django.core.wsgi import get_wsgi_application
from django.utils.http import parse_header_parameters

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

# Codecs Python knows that are not a text encoding of a request (rot13, base64, zlib...) or that
# Django cannot read one with (idna): Django's request raised on them before any middleware or
# error page ran, a bare 500.
_NOT_A_CHARSET = {"idna", "punycode", "raw_unicode_escape", "unicode_escape"}


def _charset_readable(content_type: str) -> bool:
    charset = parse_header_parameters(content_type)[1].get("charset")
    if not charset:
        return True
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        return True  # unknown: Django answers that itself (400)
    return codec._is_text_encoding and codec.name not in _NOT_A_CHARSET


def refuse_unreadable_charsets(app):
    """A request whose Content-Type names a charset that is no text encoding gets a 400."""
    def wrapped(environ, start_response):
        content_type = environ.get("CONTENT_TYPE", "")
        if "charset" in content_type.lower() and not _charset_readable(content_type):
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"the Content-Type's charset is not a text encoding\n"]
        return app(environ, start_response)

    return wrapped


application = refuse_unreadable_charsets(get_wsgi_application())
