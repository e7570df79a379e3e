"""A database that is down or restarting answers 503 (retry later), never a 500 page.

What a client meets while PostgreSQL restarts (or its backends are terminated, or SQLite is
locked for too long) is an ``OperationalError`` or ``InterfaceError``, in a view or in a
middleware such as sessions'. Both become a 503 with ``Retry-After``: a short JSON body
under /api/ (the annotator page keeps the answer and sends it again with the same client
id, which stores it once), a plain page elsewhere. The request's broken connection is
closed, so the next request opens a new one. Redis that does not answer, where a page uses it
as its cache, gets the same 503 (annotation itself uses neither Redis nor the broker).

``DatabaseUnavailableMiddleware.process_exception`` catches what views raise;
``server_error`` (``handler500`` in webapp/urls.py) catches the rest, from other middleware.
"""
from __future__ import annotations

import functools
import logging
import sys

from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections
from django.db.utils import InterfaceError, OperationalError
from django.dispatch import receiver
from django.http import HttpResponse, JsonResponse
from django.views import defaults

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2


def _unavailable_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(the database's errors, the cache's and the broker's): a service that is down."""
    database: list[type[BaseException]] = [OperationalError, InterfaceError]
    try:  # raised unwrapped where a driver is used outside Django's cursor wrapper
        import psycopg
    except ImportError:  # pragma: no cover - SQLite-only installs
        pass
    else:
        database += [psycopg.OperationalError, psycopg.InterfaceError]
    others: list[type[BaseException]] = []
    try:  # Redis, as the cache of a researcher's page (annotation does not use it)
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover
        pass
    else:
        others += [RedisConnectionError, RedisTimeoutError]
    from kombu.exceptions import OperationalError as BrokerUnavailable

    others.append(BrokerUnavailable)
    return tuple(database), tuple(others)


DATABASE_UNAVAILABLE, SERVICE_UNAVAILABLE = _unavailable_errors()
UNAVAILABLE = DATABASE_UNAVAILABLE + SERVICE_UNAVAILABLE

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Back in a moment</title>
<meta http-equiv="refresh" content="{seconds}"></head>
<body><h1>Back in a moment</h1>
<p>The site is unavailable for a moment. This page reloads itself in {seconds} seconds.</p></body></html>
"""


def database_unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) says the database, or Redis as a cache or
    broker, cannot be reached."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, SERVICE_UNAVAILABLE):
            return True
        if isinstance(exc, DATABASE_UNAVAILABLE):
            # SQLite reports a schema or SQL mistake as an OperationalError too: that is a bug.
            message = str(exc)
            return not message.startswith(("no such table", "no such column")) and "syntax error" not in message
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _wants_json(request) -> bool:
    if request.path.startswith("/api/"):
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def unavailable_response(request) -> HttpResponse:
    if _wants_json(request):
        detail = "The service is unavailable for a moment; send the request again."
        response = JsonResponse({"error": "unavailable", "detail": detail}, status=503)
    else:
        response = HttpResponse(PAGE.format(seconds=RETRY_AFTER_S), status=503,
                                content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_S)
    response["Cache-Control"] = "no-store"
    # Logged once, as a warning (below), not as an error per request for the whole outage.
    response._has_been_logged = True
    return response


def _close_connections() -> None:
    """Drop this thread's connections, so the next request opens new ones (Django would close
    a broken one at the end of the request too; this does not wait for its health check).
    A connection inside an atomic block (a test's) is left to its owner."""
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - it is broken already; what matters is that it is dropped
            connection.connection = None


def _answer(request, exc: BaseException) -> HttpResponse:
    log.warning("service unavailable: %s %s answered 503 (%s: %s)", request.method, request.path,
                type(exc).__name__, (str(exc).strip().splitlines() or [""])[0])
    _close_connections()
    return unavailable_response(request)


class DatabaseUnavailableMiddleware:
    """Turns a view's database-unavailable error into a 503 (last in MIDDLEWARE, so that it is
    the first to see a view's exception)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if database_unavailable(exception):
            return _answer(request, exception)
        return None


def server_error(request, *args, **kwargs):
    """handler500: a 503 when the error that got here is the database's, else Django's page."""
    exc = sys.exc_info()[1]
    if database_unavailable(exc):
        return _answer(request, exc)
    return defaults.server_error(request, *args, **kwargs)


class ContentSecurityPolicyMiddleware:
    """Sets ``settings.CALIBRA_CSP`` (or the policy of the longest matching prefix in
    ``CALIBRA_CSP_BY_PATH``) on every response that has no Content-Security-Policy of its own.
    The policies' header values are built once (again when a test overrides the settings)."""

    def __init__(self, get_response):
        self.get_response = get_response

    @staticmethod
    def policy_for(path: str) -> str:
        default, by_path = _csp_headers()
        for prefix, header in by_path:  # longest prefix first
            if path.startswith(prefix):
                return header
        return default

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.policy_for(request.path_info)
        return response


def _csp_header(directives: dict) -> str:
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


@functools.cache
def _csp_headers() -> tuple[str, list[tuple[str, str]]]:
    """(the default policy's header value, [(path prefix, its header value)] longest first)."""
    by_path = settings.CALIBRA_CSP_BY_PATH
    return (_csp_header(settings.CALIBRA_CSP),
            [(prefix, _csp_header(by_path[prefix])) for prefix in sorted(by_path, key=len, reverse=True)])


@receiver(setting_changed)
def _csp_setting_changed(setting, **kwargs):
    if setting in ("CALIBRA_CSP", "CALIBRA_CSP_BY_PATH"):
        _csp_headers.cache_clear()


class HealthzMiddleware:
    """``/healthz`` answered before CommonMiddleware validates the Host header: a load
    balancer or a container healthcheck asks by IP address or 127.0.0.1, whatever
    ALLOWED_HOSTS says. Nothing else is answered here."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info == "/healthz" and request.method in ("GET", "HEAD"):
            from annotate.views import healthz

            return healthz(request)
        return self.get_response(request)


class NullCharacterMiddleware:
    """A NUL character in the path, a query parameter or a url-encoded form field (its name or
    its value) is a 400 naming it, before any view: PostgreSQL stores and compares no NUL in
    text, and refuses the query with an error (a 500) wherever a view filters by the value.
    Multipart bodies are left to the view (reading them here would bypass its upload handlers
    and limits); their fields pass through forms and serializers, which refuse NUL themselves,
    as the API's JSON parser does (annotate/parsers.py)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        where, name = "query parameter", _with_nul(request.GET)
        if name is None and request.content_type == "application/x-www-form-urlencoded":
            where, name = "form field", _with_nul(request.POST)
        if name is None and "\x00" in request.path_info:  # a <str:...> part of a URL
            where, name = "path", request.path_info
        if name is None:
            return self.get_response(request)
        detail = f"The {where} {name!r} holds a NUL character (%00), which is not allowed."
        if _wants_json(request):
            return JsonResponse({"detail": detail, "field": name, "code": "null_character"}, status=400)
        return HttpResponse(detail, status=400, content_type="text/plain; charset=utf-8")


def _with_nul(params) -> str | None:
    """The first parameter whose name or one of whose values holds a NUL, or None."""
    for name, values in params.lists():
        if "\x00" in name or any("\x00" in value for value in values):
            return name
    return None
