"""Crowd workers who join by a study's link (Prolific-style): the link's parameters, the account
each worker gets, and what keeps one person from taking another's place or minting accounts.

A worker's account is bound to the browser that made it: the membership keeps the SHA-256 of
a secret held in that browser's cookie, so knowing a worker's id is not enough to sign in as
them. New accounts are counted per client address and per study link in the ``ratelimit``
cache (failing open, like every limit there).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from annotate.audit import audit
from annotate.models import Study, StudyMembership
from annotate.ratelimit import rate_count, rate_subject
from annotate.roles import ANNOTATORS
from annotate.services.studies import StudyError

# The link's parameters and their longest values. Prolific's ids are 24 hex characters, other
# platforms' ASCII letters and digits: nothing else is taken, so that no look-alike (Cyrillic
# letters, full-width digits) names a second account for one worker, and every value fits its column.
# The first is a letter or digit: a leading '-' would read as a formula in the researcher's CSV.
CROWD_LINK_PARAMS = {"PROLIFIC_PID": 64, "STUDY_ID": 64, "SESSION_ID": 128}
_CROWD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # ASCII only, unlike \w or str.isalnum()
_BROWSER_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
# Completion codes without 0/O and 1/I/L: a worker copies the code by eye as often as by clipboard.
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 8


class CrowdEntryRefused(StudyError):
    """The link does not sign this worker in: ``status`` is the page's HTTP status, ``code`` a
    short name for the reason and ``field`` the link parameter at fault, if any."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid", field: str = ""):
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


class CrowdLinkOff(CrowdEntryRefused):
    """The study takes invited annotators only."""

    def __init__(self):
        super().__init__("this study takes invited annotators only", status=404, code="crowd_link_off")


def crowd_link_param(name: str, value: str, *, required: bool = False) -> str:
    """``value`` if it has the documented format of the link parameter ``name`` ('' when absent
    and optional), else CrowdEntryRefused naming the parameter."""
    longest = CROWD_LINK_PARAMS[name]
    if not value and not required:
        return ""
    if len(value) > longest or not _CROWD_ID.fullmatch(value):
        raise CrowdEntryRefused(f"{name} must be 1 to {longest} ASCII letters, digits, '-' or '_', starting "
                                f"with a letter or digit", field=name)
    return value


def crowd_username(study: Study, worker_id: str) -> str:
    # One worker, one account, however the id's letters are cased (Prolific's are lower-case hex).
    return f"crowd-{study.public_id.hex[:8]}-{worker_id.lower()}"


def crowd_browser_secret(cookie: str | None) -> str:
    """The secret this browser proves itself with: its cookie's, or a new one."""
    return cookie if cookie and _BROWSER_SECRET.fullmatch(cookie) else secrets.token_urlsafe(32)


def _browser_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def crowd_completion_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(CODE_LENGTH))


_OVER_LIMIT = {"address": "Too many new accounts were made by this link from your network.",
               "link": "This study link has taken as many new workers as it may for now."}


def _new_accounts_over_limit(*, study: Study, address: str | None, now: float) -> str:
    """Count one more new account from ``address`` for this study's link; '' when it is within
    both limits, else the limit it passes ("address" or "link")."""
    period = settings.CALIBRA_CROWD_JOIN_WINDOW_S
    window = int(now // period)
    limits = []
    if source := rate_subject(address):
        limits.append(("address", f"crowd:ip:{source}:{window}", settings.CALIBRA_CROWD_JOINS_PER_IP))
    # The address first, and the link counted only within it: one address cannot use up the link.
    limits.append(("link", f"crowd:link:{study.public_id.hex}:{window}",
                   settings.CALIBRA_CROWD_JOINS_PER_LINK))
    for name, key, limit in limits:
        count = rate_count(key, period) if limit else None
        if count is not None and count > limit:
            return name
    return ""


def crowd_worker_join(*, study: Study, worker_id: str, session_id: str = "", browser_secret: str,
                      address: str | None = None, now: float | None = None):
    """The annotator account of a crowd worker, member of this study only, for the browser that
    holds ``browser_secret`` (see ``crowd_browser_secret``). The first join binds the account to
    that browser and gives the worker a completion code of their own; a later one from another
    browser is refused (403) and audited, as is a new account past the limits (429)."""
    if not study.crowd_link:
        raise CrowdLinkOff()
    worker_id = crowd_link_param("PROLIFIC_PID", worker_id, required=True)
    session_id = crowd_link_param("SESSION_ID", session_id)
    if study.status != Study.Status.OPEN:
        raise CrowdEntryRefused("this study is not open", code="study_not_open")
    username = crowd_username(study, worker_id)
    if not StudyMembership.objects.filter(study=study, annotator__username=username).exists():
        over = _new_accounts_over_limit(study=study, address=address, now=time.time() if now is None else now)
        if over:
            audit(None, "crowd.refused", study, worker_id=worker_id, reason=f"new_accounts_per_{over}")
            raise CrowdEntryRefused(f"{_OVER_LIMIT[over]} Try again later, or contact the researcher.",
                                    status=429, code="too_many_accounts")
    user, bound_elsewhere = _crowd_member_save(
        study=study, username=username, worker_id=worker_id, session_id=session_id,
        browser_hash=_browser_hash(browser_secret))
    if bound_elsewhere:  # audited outside the transaction that found it, which has nothing to undo
        audit(None, "crowd.refused", study, worker_id=worker_id, reason="another_browser")
        raise CrowdEntryRefused("This worker id is already in use in another browser. Continue in the "
                                "browser where you started, or contact the researcher.",
                                status=403, code="worker_in_use")
    return user


@transaction.atomic
def _crowd_member_save(*, study: Study, username: str, worker_id: str, session_id: str, browser_hash: str):
    """(user, False) once the worker's account and membership are saved; (user, True), saving
    nothing, when the membership is bound to another browser."""
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()  # signs in through the study link only
        user.save()
        user.groups.add(Group.objects.get_or_create(name=ANNOTATORS)[0])
    membership, _ = StudyMembership.objects.select_for_update().get_or_create(study=study, annotator=user)
    if membership.crowd_browser_hash and not hmac.compare_digest(membership.crowd_browser_hash, browser_hash):
        return user, True
    # A member who joined before browsers were bound is bound to the first browser that comes back.
    membership.crowd_browser_hash = browser_hash
    membership.completion_code = membership.completion_code or crowd_completion_code()
    membership.external_worker_id = worker_id
    membership.external_session_id = session_id or membership.external_session_id
    membership.save(update_fields=["crowd_browser_hash", "completion_code", "external_worker_id",
                                   "external_session_id"])
    return user, False


@transaction.atomic
def crowd_browser_release(*, membership: StudyMembership) -> StudyMembership:
    """Let the next browser that follows the link with this worker's id take their account over
    (the worker changed devices and asked the researcher)."""
    if not membership.external_worker_id:
        raise StudyError("only a crowd worker's account is bound to a browser")
    membership.crowd_browser_hash = ""
    membership.save(update_fields=["crowd_browser_hash"])
    audit(None, "crowd.browser_release", membership.study, worker_id=membership.external_worker_id)
    return membership
