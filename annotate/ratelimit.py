"""Rate limits: failed sign-ins (per username and address, and per address) and annotators' submissions.

Counters live in the ``ratelimit`` cache (Redis in production) and fail open: when the cache
cannot be reached, nothing is limited, a warning is logged, and the cache is left alone for a
while so that each request does not wait for it again. A Redis outage must not stop annotation.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import time

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import caches
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver
from django.http import HttpRequest

from annotate.audit import client_ip, record

log = logging.getLogger(__name__)


RATE_CACHE = "ratelimit"
CACHE_RETRY_S = 30.0  # after a cache error, how long counting is skipped before trying again
_cache_down_until = 0.0


def _cache_failed(exc: Exception) -> None:
    global _cache_down_until
    _cache_down_until = time.monotonic() + CACHE_RETRY_S
    log.warning("rate limits off for %.0f s: the %r cache failed (%s: %s)", CACHE_RETRY_S, RATE_CACHE,
                type(exc).__name__, exc)


def _cache_up() -> bool:
    return time.monotonic() >= _cache_down_until


def rate_count(key: str, period: int) -> int | None:
    """Count one more event under ``key`` (kept ``period`` seconds) and return the count: one
    cache increment, or an add for the first event. None when the cache is unavailable."""
    if not _cache_up():
        return None
    try:
        cache = caches[RATE_CACHE]
        try:
            return cache.incr(key)
        except ValueError:  # not there yet (or just expired)
            if cache.add(key, 1, timeout=period):
                return 1
            return cache.incr(key)  # another request added it first
    except Exception as exc:  # noqa: BLE001 - any cache failure: count nothing, limit nothing
        _cache_failed(exc)
        return None


def rate_counts(keys: list[str]) -> dict[str, int]:
    """The counts under ``keys`` (absent keys left out); empty when the cache is unavailable."""
    if not _cache_up():
        return {}
    try:
        return caches[RATE_CACHE].get_many(keys)
    except Exception as exc:  # noqa: BLE001
        _cache_failed(exc)
        return {}


def rate_subject(address: str | None) -> str | None:
    """Who a per-address limit counts: the address, or for IPv6 its /64, which one host or one
    home network usually holds whole (counting single addresses, it could rotate through 2^64)."""
    if not address:
        return None
    ip = ipaddress.ip_address(address)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


# ---- sign-in: recorded, and refused after too many failures ------------------------------

def _sign_in_keys(request, username: str) -> dict[str, tuple[int, int]]:
    """The failure counters a sign-in attempt falls under, with their limits: per username and
    address (guessing one account's password: an attacker elsewhere locks only their own pair,
    never the owner at theirs) and per address (trying many accounts)."""
    period = settings.CALIBRA_SIGN_IN_WINDOW_S
    window = int(time.time() // period)
    # Hashed: what was typed as a username can hold any character, and cache keys may not.
    name = hashlib.sha256(username.casefold().encode()).hexdigest()[:32]
    ip = rate_subject(client_ip(request)) if request is not None else None
    keys = {f"signin:pair:{name}:{ip or '-'}:{window}": settings.CALIBRA_SIGN_IN_FAILURES_PER_USERNAME_AND_IP}
    if ip:
        keys[f"signin:ip:{ip}:{window}"] = settings.CALIBRA_SIGN_IN_FAILURES_PER_IP
    return {key: (limit, period) for key, limit in keys.items()}


def _username(credentials: dict) -> str:
    from django.contrib.auth import get_user_model

    return str(credentials.get("username") or credentials.get(get_user_model().USERNAME_FIELD) or "")


def sign_in_wait(request, username: str) -> int:
    """Seconds until a sign-in as ``username`` from this request's address may be tried again
    (0: now). Counted per fixed window, so the wait is what is left of it."""
    keys = _sign_in_keys(request, username)
    counts = rate_counts(list(keys))
    if any(counts.get(key, 0) >= limit for key, (limit, _) in keys.items()):
        period = settings.CALIBRA_SIGN_IN_WINDOW_S
        return max(1, int(period - time.time() % period))
    return 0


class SignInThrottle:
    """First of AUTHENTICATION_BACKENDS: authenticates no one, but refuses every attempt at an
    account from an address, or from an address, with too many recent failures, before a
    password is checked.

    The sign-in form then shows the wait (templates/registration/login.html reads
    ``request.calibra_sign_in_wait``); the token endpoint answers 429 with Retry-After. It has no
    ``get_user``, so sessions never name it as their backend."""

    def authenticate(self, request, username=None, **credentials):
        username = username or _username(credentials)
        wait = sign_in_wait(request, username) if username else 0
        if not wait:
            return None  # the next backend decides
        if request is not None:
            request.calibra_sign_in_wait, request.calibra_sign_in_minutes = wait, -(-wait // 60)
        if request is not None and not isinstance(request, HttpRequest):  # DRF (the token endpoint)
            from rest_framework.exceptions import Throttled

            record(None, request, "login.failed", actor_name=username, details={"refused": "too_many_failures"})
            raise Throttled(wait=wait)
        raise PermissionDenied  # authenticate() stops here and sends user_login_failed


@receiver(user_logged_in, dispatch_uid="calibra_audit_login")
def _signed_in(sender, request, user, **kwargs):
    record(user, request, "login", user)


@receiver(user_login_failed, dispatch_uid="calibra_audit_login_failed")
def _sign_in_failed(sender, credentials, request=None, **kwargs):
    username = _username(credentials)
    refused = getattr(request, "calibra_sign_in_wait", 0)
    if not refused and username:
        for key, (_, period) in _sign_in_keys(request, username).items():
            rate_count(key, period)
    record(None, request, "login.failed", actor_name=username,
            details={"refused": "too_many_failures"} if refused else {})
