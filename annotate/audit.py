"""Who did what: the audit log of researchers' actions, admin changes and sign-ins; and the
guards around sign-in, which the same events describe (failures are counted and, past a
limit, refused for a while).

``audit(request_or_user, action, target, **details)`` writes one ``AuditEvent``. Services call
it next to the change they make, inside its transaction, so an event exists exactly when its
change does; views call it for the services they may not change (jobs, reports). Given no
request, it takes the actor and the address from the request being served
(``AuditContextMiddleware``), so a service called from a view, an API or the admin records who
asked without each caller passing it on; outside a request (commands, workers) the actor is
empty.

Counters (failed sign-ins here, annotators' submissions in ``annotate.apis``) live in the
``ratelimit`` cache (Redis in production) and fail open: when the cache cannot be reached,
nothing is limited, a warning is logged, and the cache is left alone for a while so that each
request does not wait for it again. A Redis outage must not stop annotation.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
from contextvars import ContextVar

from django.conf import settings
from django.db import models as db_models
from django.http import HttpRequest

from annotate.models import AuditEvent

log = logging.getLogger(__name__)

_current_request: ContextVar[HttpRequest | None] = ContextVar("calibra_audit_request", default=None)


class AuditContextMiddleware:
    """Keeps the request being served where ``audit`` finds it (after authentication)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            _current_request.reset(token)


def client_ip(request) -> str | None:
    """The client's address: REMOTE_ADDR, or, when that is one of ``CALIBRA_TRUSTED_PROXIES``,
    the right-most entry of X-Forwarded-For that is not a trusted proxy (each proxy appends the
    address it was reached from; what is left of a trusted hop was written by someone else)."""
    meta = request.META
    address = _ip(meta.get("REMOTE_ADDR", ""))
    trusted = _networks(tuple(settings.CALIBRA_TRUSTED_PROXIES))
    if address is None or not _within(address, trusted):
        return str(address) if address is not None else None
    for entry in reversed(meta.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        hop = _ip(entry.strip())
        if hop is None:  # not an address: written by the client, and no better than the last hop
            break
        address = hop
        if not _within(hop, trusted):
            break
    return str(address)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
    return getattr(address, "ipv4_mapped", None) or address


def _within(address, networks) -> bool:
    return any(address in network for network in networks)


@functools.lru_cache(maxsize=4)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The trusted proxies' networks (an address is a network of one), parsed once per setting."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def _is_request(value) -> bool:
    # A DRF Request wraps the HttpRequest and answers for it (META, user).
    return isinstance(value, HttpRequest) or isinstance(getattr(value, "_request", None), HttpRequest)


def _target_fields(target) -> dict:
    if target is None:
        return {}
    if isinstance(target, type) and issubclass(target, db_models.Model):  # a kind of row, not one
        return {"target_type": target._meta.label_lower}
    return {"target_type": target._meta.label_lower, "target_id": str(target.pk)[:64],
            "target_repr": str(target)[:200]}


def record(actor, request, action: str, target=None, *, actor_name: str = "", details: dict | None = None):
    if actor is not None and not actor.is_authenticated:
        actor = None
    return AuditEvent.objects.create(
        actor=actor, actor_name=(actor.get_username() if actor is not None else actor_name)[:150],
        action=action, ip=client_ip(request) if request is not None else None, details=details or {},
        **_target_fields(target))


def audit(request_or_user, action: str, target=None, **details) -> AuditEvent:
    """Record ``action`` (a short code: ``study.open``) by a request's user or by a user, on
    ``target`` (a row, a model class for an action on many rows, or None), with ``details``
    (JSON). None: the request being served, if any."""
    if _is_request(request_or_user):
        request, actor = request_or_user, request_or_user.user
    else:
        request = _current_request.get()
        actor = request_or_user if request_or_user is not None else getattr(request, "user", None)
    return record(actor, request, action, target, details=details)


# ---- counters in the cache, failing open -------------------------------------------------
