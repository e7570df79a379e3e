"""Security: the production settings pass ``check --deploy`` and send the security headers;
every form carries a CSRF token and a POST without one is refused; sign-in and submissions
are rate-limited, failing open when the cache is down; a study's images reach only the
members who hold their items; researchers' actions land in the audit log, once each.

(What an annotator receives is scanned for checkpoint identity in
test_annotator_sees_no_checkpoint.py.)"""
from __future__ import annotations

import importlib
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.test import Client, override_settings
from django.urls import Resolver404, resolve, reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate import ratelimit as audit_module
from annotate.models import (
    AuditEvent, Checkpoint, Dataset, GenerationJob, Image, Judgment, Prompt, Report, RewardModel, ScoringJob,
    Study, StudyMembership,
)
from annotate.services.studies import membership_pause, study_close, study_create_pairwise
from tests.factories import annotators, make_images, open_pairwise

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_counters():
    """Counters from another test (or a cache marked down by one) must not leak into this one."""
    caches["ratelimit"].clear()
    audit_module._cache_down_until = 0.0
    yield
    caches["ratelimit"].clear()
    audit_module._cache_down_until = 0.0


def production_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEBUG", "MEDIA_STORAGE", "DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY")}
    return {**env, "DJANGO_SETTINGS_MODULE": "webapp.settings.production", "SECRET_KEY": secrets.token_urlsafe(64),
            "ALLOWED_HOSTS": "calibra.example.org", "CALIBRA_DATA_DIR": str(tmp_path),
            "STATIC_ROOT": str(tmp_path / "static"), **extra}


# ---- 1. deployment checks and headers ------------------------------------------------------

@pytest.fixture(scope="module")
def deploy_check(tmp_path_factory) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, capture_output=True,
                          text=True, env=production_env(tmp_path_factory.mktemp("deploy")), timeout=300)


def check_ids(output: str) -> list[str]:
    return re.findall(r"\(([\w.]+\.[WE]\d+)\)", output)


def test_check_deploy_is_clean_with_production_settings(deploy_check):
    output = deploy_check.stdout + deploy_check.stderr
    assert deploy_check.returncode == 0 and check_ids(output) == [], output
    assert "System check identified no issues" in output


SECURITY_SETTINGS = [
    "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SECURE_REDIRECT_EXEMPT", "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
    "SECURE_CONTENT_TYPE_NOSNIFF", "SECURE_REFERRER_POLICY", "SECURE_CROSS_ORIGIN_OPENER_POLICY",
    "X_FRAME_OPTIONS", "CALIBRA_CSP", "CALIBRA_CSP_BY_PATH", "CALIBRA_TRUSTED_PROXIES",
]


@pytest.fixture
def production_security(monkeypatch):
    """The security settings exactly as webapp/settings/production.py makes them."""
    monkeypatch.setenv("SECRET_KEY", secrets.token_urlsafe(64))
    for name in ("SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_PRELOAD", "TRUSTED_PROXIES"):
        monkeypatch.delenv(name, raising=False)
    sys.modules.pop("webapp.settings.production", None)
    production = importlib.import_module("webapp.settings.production")
    sys.modules.pop("webapp.settings.production", None)
    with override_settings(**{name: getattr(production, name) for name in SECURITY_SETTINGS}):
        yield production


EXPECTED_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
                "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
                "frame-ancestors 'none'")


def test_production_answers_with_the_security_headers(production_security, researcher):
    client = Client()
    plain = client.get("/")
    assert plain.status_code == 301 and plain["Location"] == "https://testserver/"
    assert client.get("/healthz").status_code == 200  # load balancers' checks over HTTP
    # ... and by address, whatever ALLOWED_HOSTS says (a container healthcheck, a probe by IP);
    # every other page still refuses a host it does not serve.
    assert client.get("/healthz", HTTP_HOST="10.0.0.5").status_code == 200
    assert client.get("/healthz", HTTP_HOST="127.0.0.1:8000").json()["status"] == "ok"
    assert client.get("/accounts/login/", HTTP_HOST="10.0.0.5", secure=True).status_code == 400
    page = client.get("/", secure=True)
    proxied = client.get("/", HTTP_X_FORWARDED_PROTO="https")  # TLS ends at the proxy
    for response in (page, proxied):
        assert response.status_code == 200
        assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Frame-Options"] == "DENY"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response["Content-Security-Policy"] == EXPECTED_CSP
    signed_in = client.post(reverse("login"), {"username": "res", "password": "res-pass-123"}, secure=True)
    assert signed_in.status_code == 302
    session, csrf = signed_in.cookies["sessionid"], client.cookies["csrftoken"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"
    assert csrf["secure"] and not csrf["httponly"]  # annotate.js reads it for X-CSRFToken
    docs = client.get(reverse("api-docs"), secure=True)
    assert docs.status_code == 200 and "script-src 'self' 'unsafe-inline'" in docs["Content-Security-Policy"]


def test_static_files_get_the_policy_and_nosniff(client):
    script = client.get("/static/js/annotate.js")
    assert script.status_code == 200
    assert script["Content-Security-Policy"] == EXPECTED_CSP and script["X-Content-Type-Options"] == "nosniff"


# ---- 2. CSRF on every form -----------------------------------------------------------------

class PageParser(HTMLParser):
    """Links, forms (method, action, inputs) and what a strict CSP would block: inline scripts,
    <style> elements and style attributes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self.forms, self.scripts, self.stylesheets, self.inline = [], [], [], [], []
        self._form = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "style" in a:
            self.inline.append(f"<{tag} style=...>")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "form":
            self._form = {"method": (a.get("method") or "get").lower(), "action": a.get("action") or "",
                          "inputs": []}
            self.forms.append(self._form)
        elif tag in ("input", "button") and self._form is not None:
            self._form["inputs"].append((a.get("type"), a.get("name")))
        elif tag == "script":
            if a.get("src"):
                self.scripts.append(a["src"])
            elif a.get("type") != "application/json":  # data for scripts, never run
                self.inline.append("<script> without src")
        elif tag == "style":
            self.inline.append("<style>")
        elif tag == "link" and "stylesheet" in (a.get("rel") or "") and a.get("href"):
            self.stylesheets.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


# Not followed: files, downloads, actions reached by POST only, and the JSON API (the docs page aside).
NOT_CRAWLED = re.compile(r"^/(static|media)/|logout|\.(csv|jsonl|jpg|png)$|/download|^/api/(?!docs/)")


def crawl(client, seeds: list[str], limit: int = 400) -> dict[str, PageParser]:
    """HTML pages reachable from ``seeds`` by links, each URL shape (ids as N, no query) once."""
    pages: dict[str, PageParser] = {}
    shapes: set[str] = set()
    visited: set[str] = set()
    queue = deque(seeds)
    while queue and len(pages) < limit:
        url = queue.popleft()
        parts = urlsplit(url)
        if parts.netloc or parts.scheme or NOT_CRAWLED.search(parts.path) or url in visited:
            continue
        shape = re.sub(r"\d+", "N", parts.path)
        if url not in seeds and shape in shapes:  # seeds are visited whatever their shape
            continue
        shapes.add(shape)
        visited.add(url)
        response = client.get(url)
        if response.status_code != 200 or not response["Content-Type"].startswith("text/html"):
            continue
        page = parse(response.content.decode())
        pages[url] = page
        queue.extend(urljoin(url, link).split("#")[0] for link in page.links)
    return pages


def post_forms(pages: dict[str, PageParser]) -> list[tuple[str, str, dict]]:
    """(page, URL name of the form's action, form) for every POST form of the pages."""
    found = []
    for url, page in pages.items():
        for form in page.forms:
            if form["method"] != "post":
                continue
            target = urlsplit(urljoin(url, form["action"])).path
            try:
                name = resolve(target).view_name
            except Resolver404:
                name = target
            found.append((url, name, form))
    return found


@pytest.fixture
def site(researcher, annotator):
    """Something on every page: studies in each state with members (one paused), jobs that can
    be retried or cancelled, reports, a reward model."""
    draft_dataset, checkpoints = make_images(prompts=2, per_prompt=1)
    draft = study_create_pairwise(name="draft study", dataset=draft_dataset, checkpoints=checkpoints)
    open_study = open_pairwise(members=[annotator, *annotators(1)], prompts=2, per_prompt=1)
    membership_pause(membership=open_study.memberships.exclude(annotator=annotator).get(), reason="test")
    closed = study_close(study=open_pairwise(members=annotators(1, prefix="c"), prompts=2, per_prompt=1))
    checkpoint = open_study.checkpoints.first()
    failed = GenerationJob.objects.create(checkpoint=checkpoint, dataset=open_study.dataset, seeds=[0],
                                          status=GenerationJob.Status.FAILED, created_by=researcher)
    running = GenerationJob.objects.create(checkpoint=checkpoint, dataset=open_study.dataset, seeds=[1],
                                           status=GenerationJob.Status.RUNNING, created_by=researcher)
    reward = RewardModel.objects.create(name="clip", kind="clip", location="/nowhere")
    scoring = ScoringJob.objects.create(reward_model=reward, dataset=open_study.dataset,
                                        status=ScoringJob.Status.FAILED, created_by=researcher)
    Report.objects.create(study=open_study, format="html", created_by=researcher)
    return {"draft": draft, "open": open_study, "closed": closed, "failed": failed, "running": running,
            "scoring": scoring, "checkpoint": checkpoint}


def test_every_post_form_carries_a_csrf_token(site, researcher, annotator):
    research = Client()
    research.force_login(researcher)
    seeds = ["/", reverse("jobs"), reverse("study-create"), reverse("study-create") + "?kind=rating",
             reverse("study-create") + "?kind=best_of_n", reverse("reward-models"), "/admin/",
             *[reverse("study-detail", args=[site[k].pk]) for k in ("draft", "open", "closed")],
             reverse("checkpoint-gallery", args=[site["checkpoint"].pk])]
    pages = crawl(research, seeds)
    work = Client()
    work.force_login(annotator)
    pages |= crawl(work, ["/", reverse("annotate-study", args=[site["open"].public_id])])
    pages |= crawl(Client(), ["/", reverse("login"), reverse("admin:login")])
    from django.contrib.auth.models import User

    pages |= crawl(web_as(User.objects.create_superuser("boss", password="boss-pass-123")),
                   ["/admin/auth/user/", "/admin/auth/group/"])
    forms = post_forms(pages)
    missing = [(url, name) for url, name, form in forms if ("hidden", "csrfmiddlewaretoken") not in form["inputs"]]
    assert missing == []
    names = {name for _, name, _ in forms}
    assert {"study-open", "study-close", "study-reopen", "study-member-pause", "study-member-resume",
            "study-report-build", "study-report-request", "job-retry", "job-cancel", "study-create", "logout", "login", "admin:login", "admin:annotate_study_changelist",
            "admin:annotate_study_add", "admin:annotate_study_change", "admin:auth_user_change",
            "admin:logout"} <= names, sorted(names)
    assert len(pages) > 60  # the admin's pages included


def test_pages_have_nothing_inline_that_the_policy_blocks(site, researcher, annotator):
    research = Client()
    research.force_login(researcher)
    pages = crawl(research, ["/", reverse("jobs"), reverse("study-create"), reverse("reward-models"), "/admin/",
                             reverse("study-detail", args=[site["open"].pk]),
                             reverse("checkpoint-gallery", args=[site["checkpoint"].pk])])
    work = Client()
    work.force_login(annotator)
    pages |= crawl(work, ["/", reverse("annotate-study", args=[site["open"].public_id])])
    pages |= crawl(Client(), [reverse("login")])
    blocked = {url: page.inline for url, page in pages.items() if page.inline}
    assert blocked == {}


@pytest.fixture
def strict(researcher) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(researcher)
    return client


def test_posts_without_a_csrf_token_are_refused(site, strict, researcher):
    draft, open_study, failed = site["draft"], site["open"], site["failed"]
    refused = {
        "open": strict.post(reverse("study-open", args=[draft.pk])),
        "close": strict.post(reverse("study-close", args=[open_study.pk])),
        "retry": strict.post(reverse("job-retry", args=["generation", failed.pk])),
        "report": strict.post(reverse("study-report-build", args=[open_study.pk]), {"format": "csv"}),
        "new study": strict.post(reverse("study-create"), {
            "kind": "pairwise", "name": "forged", "dataset": draft.dataset_id,
            "checkpoints": list(draft.checkpoints.values_list("pk", flat=True)), "pairing": "matched",
            "redundancy": 1, "gold_share": 0, "item_order": "closest", "action": "create"}),
        "admin action": strict.post(reverse("admin:annotate_study_changelist"),
                                    {"action": "close_studies", "_selected_action": [open_study.pk]}),
        "logout": strict.post(reverse("logout")),
        "login": Client(enforce_csrf_checks=True).post(reverse("login"), {"username": "res",
                                                                          "password": "res-pass-123"}),
    }
    assert {what: r.status_code for what, r in refused.items()} == {what: 403 for what in refused}
    draft.refresh_from_db(), open_study.refresh_from_db(), failed.refresh_from_db()
    assert (draft.status, open_study.status, failed.status) == ("draft", "open", "failed")
    assert Report.objects.count() == 1 and not Study.objects.filter(name="forged").exists()
    assert strict.get("/").context["user"] == researcher  # still signed in
    # With the token from the page, the same form goes through.
    page = strict.get(reverse("study-detail", args=[draft.pk]))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    assert strict.post(reverse("study-open", args=[draft.pk]), {"csrfmiddlewaretoken": token}).status_code == 302
    draft.refresh_from_db()
    assert draft.status == "open"


def test_the_session_api_needs_the_csrf_header_and_the_token_api_does_not(site, annotator, researcher):
    study = site["open"]
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(annotator)
    next_url = reverse("api-next", args=[study.public_id])
    refused = browser.post(next_url, {}, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    browser.get(reverse("annotate-study", args=[study.public_id]))  # sets the cookie, as the page does
    allowed = browser.post(next_url, {}, format="json", HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value)
    assert allowed.status_code == 200
    research = APIClient(enforce_csrf_checks=True)
    research.force_login(researcher)
    assert research.post(reverse("api-study-close", args=[study.pk])).status_code == 403
    script = APIClient(enforce_csrf_checks=True)  # no cookies: nothing to forge
    script.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=researcher).key}")
    assert script.post(reverse("api-study-close", args=[study.pk])).status_code == 200


# ---- 3. rate limits ------------------------------------------------------------------------

def sign_in(client: Client, username: str, password: str, ip: str = "10.0.0.1", **extra):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip, **extra)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def one_sign_in_window(monkeypatch):
    """Failures are counted in fixed 15-minute windows: a boundary crossed during a test's
    attempts would split the count. The clock stands 5 minutes into a window."""
    start = (time.time() // (15 * 60) + 1) * 15 * 60
    monkeypatch.setattr(audit_module.time, "time", lambda: start + 5 * 60)
    return start


def test_ten_failures_lock_the_username_at_that_address_only(researcher, annotator, one_sign_in_window):
    client = Client()
    for _ in range(10):
        failed = sign_in(client, "res", "wrong")
        assert failed.status_code == 200 and b"didn't match" in failed.content
    locked = sign_in(client, "RES", "res-pass-123")  # the right password (usernames match case-blind)
    assert locked.status_code == 200 and not signed_in(client)
    wait = re.search(rb"Too many failed attempts to log in. Please try again in (\d+) minutes?\.", locked.content)
    assert wait and int(wait.group(1)) == 10  # what is left of the 15-minute window
    assert APIClient().post(reverse("api-token"), {"username": "res", "password": "res-pass-123"},
                            REMOTE_ADDR="10.0.0.1").status_code == 429
    admin = Client()
    admin.post(reverse("admin:login"), {"username": "res", "password": "res-pass-123"}, REMOTE_ADDR="10.0.0.1")
    assert not signed_in(admin)
    other = Client()
    assert sign_in(other, "ann", "ann-pass-123").status_code == 302 and signed_in(other)  # same address
    elsewhere = Client()  # the account's owner, at their own address
    assert sign_in(elsewhere, "res", "res-pass-123", ip="10.9.9.9").status_code == 302 and signed_in(elsewhere)
    assert AuditEvent.objects.filter(action="login.failed", details__refused="too_many_failures").count() == 3


def test_an_attacker_failing_a_thousand_times_elsewhere_does_not_lock_the_owner_out(researcher, one_sign_in_window):
    attacker = Client()
    for n in range(1000):  # 100 addresses, each up to its own limit for this username
        sign_in(attacker, "res", "wrong", ip=f"198.51.100.{n // 10}")
    assert AuditEvent.objects.filter(action="login.failed", actor_name="res").count() == 1000
    assert not signed_in(attacker)
    owner = Client()
    assert sign_in(owner, "res", "res-pass-123", ip="10.0.0.1").status_code == 302 and signed_in(owner)


def test_rotating_through_one_ipv6_hosts_addresses_escapes_no_limit(researcher, one_sign_in_window):
    """An IPv6 host holds a /64: 200 failures from as many of its addresses once left the
    right password working; they count as one address."""
    attacker = Client()
    for n in range(10):
        sign_in(attacker, "res", "wrong", ip=f"2001:db8:1:2::{n + 1:x}")
    assert sign_in(attacker, "res", "res-pass-123", ip="2001:db8:1:2::ffff").status_code == 200
    assert not signed_in(attacker)
    owner = Client()  # the owner, on another network
    assert sign_in(owner, "res", "res-pass-123", ip="2001:db8:1:3::1").status_code == 302 and signed_in(owner)


def test_many_failures_from_one_address_lock_that_address(researcher, one_sign_in_window):
    client = Client()
    for n in range(30):
        sign_in(client, f"nobody{n}", "wrong", ip="10.0.0.2")
    sign_in(client, "res", "res-pass-123", ip="10.0.0.2")
    assert not signed_in(client)
    assert sign_in(client, "res", "res-pass-123", ip="10.0.0.3").status_code == 302 and signed_in(client)


def test_successful_sign_ins_are_not_counted_and_the_lock_ends_with_its_window(researcher, monkeypatch,
                                                                             one_sign_in_window):
    for _ in range(25):
        client = Client()
        assert sign_in(client, "res", "res-pass-123").status_code == 302
    client = Client()
    for _ in range(10):
        sign_in(client, "res", "wrong")
    sign_in(client, "res", "res-pass-123")
    assert not signed_in(client)
    later = time.time() + 15 * 60
    monkeypatch.setattr(audit_module.time, "time", lambda: later)
    assert sign_in(client, "res", "res-pass-123").status_code == 302 and signed_in(client)


def test_the_token_endpoint_answers_429_with_retry_after(researcher, one_sign_in_window):
    api = APIClient()
    for _ in range(10):
        assert api.post(reverse("api-token"), {"username": "res", "password": "x"}).status_code == 400
    refused = api.post(reverse("api-token"), {"username": "res", "password": "res-pass-123"})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) == 10 * 60 and "throttled" in refused.json()["detail"]


@override_settings(CALIBRA_TRUSTED_PROXIES=["10.0.0.254"])
def test_behind_a_proxy_the_address_is_the_one_it_forwarded(researcher, one_sign_in_window):
    client = Client()
    for n in range(30):  # all from the proxy's address, forwarded for one client
        sign_in(client, f"nobody{n}", "wrong", ip="10.0.0.254", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.9")
    sign_in(client, "res", "res-pass-123", ip="10.0.0.254", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert not signed_in(client)
    assert sign_in(client, "res", "res-pass-123", ip="10.0.0.254", HTTP_X_FORWARDED_FOR="203.0.113.10").status_code == 302
    assert AuditEvent.objects.filter(action="login.failed", ip="203.0.113.9").count() == 31


def test_a_client_reaching_the_app_past_the_proxy_cannot_forge_its_address(production_security, researcher,
                                                                            one_sign_in_window):
    """Production trusts the proxy on its loopback: a peer elsewhere that sends X-Forwarded-For
    (a new address on each try) is still counted, and audited, at its own address."""
    client = Client()
    for n in range(30):
        sign_in(client, f"nobody{n}", "wrong", ip="198.51.100.7", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}", secure=True)
    refused = sign_in(client, "res", "res-pass-123", ip="198.51.100.7", HTTP_X_FORWARDED_FOR="203.0.113.99",
                      secure=True)
    assert b"Too many failed attempts" in refused.content and not signed_in(client)
    assert set(AuditEvent.objects.values_list("ip", flat=True)) == {"198.51.100.7"}
    proxied = Client()  # the same forged header through the proxy: only the proxy's view counts
    assert sign_in(proxied, "res", "res-pass-123", ip="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.99",
                   secure=True).status_code == 302
    assert AuditEvent.objects.get(action="login").ip == "203.0.113.99"


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("198.51.100.7", "203.0.113.9", "198.51.100.7"),  # not a proxy: the header is the client's own text
    ("127.0.0.1", "", "127.0.0.1"),  # a request from the proxy's host itself
    ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
    ("::ffff:127.0.0.1", "203.0.113.9", "203.0.113.9"),  # IPv4 on a dual-stack socket
    # a load balancer (10.0.0.0/8) in front of the proxy; what the client wrote itself is left of it
    ("127.0.0.1", "6.6.6.6, 203.0.113.9, 10.1.2.3", "203.0.113.9"),
    ("127.0.0.1", "10.1.2.3, 10.1.2.4", "10.1.2.3"),  # every hop trusted: the farthest
    ("127.0.0.1", "203.0.113.9, not-an-address, 10.1.2.3", "10.1.2.3"),  # a forged entry ends the walk
    ("::1", "2001:db8::5", "2001:db8::5"),
])
def test_forwarded_addresses_are_read_only_from_trusted_proxies(peer, forwarded, client, settings, rf):
    from annotate.audit import client_ip

    settings.CALIBRA_TRUSTED_PROXIES = ["127.0.0.1", "::1", "10.0.0.0/8"]
    request = rf.get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == client


def test_a_trusted_proxy_that_is_not_an_address_stops_start_up(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, capture_output=True,
                            text=True, env=production_env(tmp_path, TRUSTED_PROXIES="127.0.0.1,nginx"), timeout=120)
    assert result.returncode != 0 and "'nginx' does not appear to be an IPv4 or IPv6 network" in result.stderr


class BrokenCache(BaseCache):
    """A cache server that does not answer (Redis down): every call raises."""

    calls = 0

    def __init__(self, location, params):
        super().__init__(params)

    def _fail(self, *args, **kwargs):
        type(self).calls += 1
        raise ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    add = get = set = delete = incr = get_many = clear = touch = has_key = _fail


class CountingCache(LocMemCache):
    """The local memory cache, counting the calls the rate limits make."""

    calls: list[str] = []

    def incr(self, *args, **kwargs):
        type(self).calls.append("incr")
        return super().incr(*args, **kwargs)

    def add(self, *args, **kwargs):
        type(self).calls.append("add")
        return super().add(*args, **kwargs)

    def get_many(self, *args, **kwargs):
        type(self).calls.append("get_many")
        return super().get_many(*args, **kwargs)


def rate_cache(backend: str):
    return override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                                     "ratelimit": {"BACKEND": f"{__name__}.{backend}", "LOCATION": "test-rl"}})


def test_sign_in_limits_fail_open_when_the_cache_is_down(researcher, caplog):
    BrokenCache.calls = 0
    with rate_cache("BrokenCache"), caplog.at_level(logging.WARNING, logger="annotate.audit"):
        client = Client()
        for _ in range(15):
            sign_in(client, "res", "wrong")
        assert sign_in(client, "res", "res-pass-123").status_code == 302 and signed_in(client)
    assert BrokenCache.calls == 1  # then left alone for a while: no request waits for it again
    assert [r.getMessage() for r in caplog.records if "rate limits off" in r.getMessage()] != []


@pytest.fixture
def annotating():
    """An annotator's token client on an item of an open study, and the answer to send (again)."""
    user, other = annotators(2)
    study = open_pairwise(members=[user, other], prompts=3, per_prompt=1)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    item = api.post(reverse("api-next", args=[study.public_id]), {}, format="json").json()
    body = {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "left"}
    other_api = APIClient()
    other_api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other).key}")
    return study, api, body, other_api


def freeze(monkeypatch, now: float) -> None:
    import annotate.apis

    monkeypatch.setattr(annotate.apis.time, "time", lambda: now)


def test_submissions_past_the_rate_answer_429_with_retry_after_and_json(annotating, monkeypatch, settings):
    study, api, body, other_api = annotating
    assert (settings.CALIBRA_SUBMIT_RATE_COUNT, settings.CALIBRA_SUBMIT_RATE_WINDOW_S) == (30, 3)
    freeze(monkeypatch, 3_000_001.5)  # one window (3,000,000 to 3,000,003 s): 1.5 s of it left
    submit = reverse("api-submit", args=[study.public_id])
    statuses = [api.post(submit, body, format="json").status_code for _ in range(30)]
    assert statuses == [201] + [200] * 29  # a burst of 30 (a retry counts as a submission)
    throttled = api.post(submit, body, format="json")
    assert throttled.status_code == 429 and throttled["Retry-After"] == "2"
    assert throttled["Content-Type"] == "application/json" and "throttled" in throttled.json()["detail"]
    skip = api.post(reverse("api-skip", args=[study.public_id]),
                    {"item": body["item"], "lease": body["lease"], "client_id": str(uuid.uuid4()), "reason": "unsure"}, format="json")
    assert skip.status_code == 429  # skips share the count
    assert api.post(reverse("api-next", args=[study.public_id]), {}, format="json").status_code == 200
    assert api.get(reverse("api-progress", args=[study.public_id])).status_code == 200
    item = other_api.post(reverse("api-next", args=[study.public_id]), {}, format="json").json()
    assert other_api.post(submit, {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "right"},
                          format="json").status_code == 201  # per annotator
    freeze(monkeypatch, 3_000_003.0)  # the next window
    assert api.post(submit, body, format="json").status_code == 200
    assert Judgment.objects.count() == 2


def test_a_submission_costs_one_cache_increment(annotating, monkeypatch):
    study, api, body, _ = annotating
    freeze(monkeypatch, 3_000_000.5)  # all six in one window: a window's first submission also adds
    submit = reverse("api-submit", args=[study.public_id])
    with rate_cache("CountingCache"):
        CountingCache.calls = []
        api.post(submit, body, format="json")
        first = list(CountingCache.calls)
        CountingCache.calls = []
        for _ in range(5):
            api.post(submit, body, format="json")
        assert CountingCache.calls == ["incr"] * 5
    assert first == ["incr", "add"]  # the window's first: not there yet, added


@override_settings(CALIBRA_SUBMIT_RATE_COUNT=3)
def test_submissions_go_on_when_the_cache_is_down(annotating, caplog):
    study, api, body, _ = annotating
    BrokenCache.calls = 0
    with rate_cache("BrokenCache"), caplog.at_level(logging.WARNING, logger="annotate.audit"):
        statuses = {api.post(reverse("api-submit", args=[study.public_id]), body, format="json").status_code
                    for _ in range(20)}
    assert statuses == {200, 201} and BrokenCache.calls == 1
    assert Judgment.objects.count() == 1


# ---- 4. media ------------------------------------------------------------------------------

@pytest.fixture
def leased(media_root):
    """An open study whose member holds a lease; every image has a file."""
    member, outsider, elsewhere = annotators(3)
    study = open_pairwise(members=[member], prompts=3, per_prompt=1)
    other_study = open_pairwise(members=[elsewhere], prompts=3, per_prompt=1)
    for image in Image.objects.all():
        path = media_root / image.file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff\xe0 jpeg of image %d" % image.pk)
    api = APIClient()
    api.force_login(member)
    item = api.post(reverse("api-next", args=[study.public_id]), {}, format="json").json()
    return {"study": study, "other_study": other_study, "member": member, "outsider": outsider,
            "elsewhere": elsewhere, "item": item, "url": item["images"][0]["url"], "media_root": media_root}


def web_as(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_images_reach_only_the_member_who_holds_the_item(leased):
    study, item, url = leased["study"], leased["item"], leased["url"]
    mine = web_as(leased["member"]).get(url)
    assert mine.status_code == 200 and mine["Cache-Control"] == "private, max-age=86400, immutable"
    assert "Content-Disposition" not in mine  # it would name the stored file
    assert web_as(leased["outsider"]).get(url).status_code == 404  # not a member
    elsewhere = web_as(leased["elsewhere"])
    assert elsewhere.get(url).status_code == 404  # a member of another study
    assert elsewhere.get(url.replace(str(study.public_id), str(leased["other_study"].public_id))).status_code == 404
    never_leased = study.items.exclude(public_id=item["item"]).first()
    guessed = url.replace(item["item"], str(never_leased.public_id))
    assert web_as(leased["member"]).get(guessed).status_code == 404  # another item of the same study
    assert web_as(leased["member"]).get(url.replace(item["item"], str(uuid.uuid4()))).status_code == 404
    assert web_as(leased["member"]).get(url.replace("/left.jpg", "/single.jpg")).status_code == 404
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))


def test_a_removed_member_or_a_closed_study_gets_no_image(leased):
    study, url = leased["study"], leased["url"]
    member = web_as(leased["member"])
    study_close(study=study)
    assert member.get(url).status_code == 404
    Study.objects.filter(pk=study.pk).update(status=Study.Status.OPEN)
    assert member.get(url).status_code == 200
    StudyMembership.objects.filter(study=study, annotator=leased["member"]).delete()
    assert member.get(url).status_code == 404


def test_researcher_images_are_for_researchers_and_media_is_not_served(leased, researcher):
    image = Image.objects.first()
    url = reverse("researcher-image", args=[image.pk])
    assert web_as(researcher).get(url).status_code == 200
    assert web_as(leased["member"]).get(url).status_code == 403
    assert Client().get(url).status_code == 302
    assert web_as(researcher).get(f"/media/{image.file.name}").status_code == 404  # DEBUG off: no /media/


def test_object_storage_urls_are_signed_and_expire(tmp_path):
    code = ("import django, json; django.setup(); from django.conf import settings; "
            "o = settings.STORAGES['default']['OPTIONS']; "
            "print(json.dumps([o['querystring_auth'], o['querystring_expire'], o['default_acl'], "
            "settings.CALIBRA_CSP['img-src']]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=production_env(tmp_path, MEDIA_STORAGE="s3", AWS_STORAGE_BUCKET_NAME="images",
                                            AWS_S3_ENDPOINT_URL="https://s3.example.org:9000/"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ('[true, 3600, null, ["\'self\'", "data:", "https://s3.example.org:9000"]]')


# ---- 6. the audit log ----------------------------------------------------------------------

def only_event(action: str, actor, target=None, **details) -> AuditEvent:
    events = list(AuditEvent.objects.filter(action=action))
    assert len(events) == 1, [(e.action, e.actor_name, e.target_repr) for e in events]
    event = events[0]
    assert event.actor == actor and event.actor_name == (actor.username if actor else event.actor_name)
    if target is not None:
        assert (event.target_type, event.target_id) == (target._meta.label_lower, str(target.pk))
    for key, value in details.items():
        assert event.details[key] == value, (key, event.details)
    return event


@pytest.fixture
def fresh_log(site):
    AuditEvent.objects.all().delete()  # the world's own making (no actor)
    return site


def test_study_page_actions_are_recorded_once_each(fresh_log, researcher):
    site, client = fresh_log, web_as(researcher)
    draft, open_study = site["draft"], site["open"]
    client.post(reverse("study-open", args=[draft.pk]), REMOTE_ADDR="192.0.2.7")
    assert only_event("study.open", researcher, draft).ip == "192.0.2.7"
    client.post(reverse("study-close", args=[draft.pk]))
    only_event("study.close", researcher, draft)
    client.post(reverse("study-reopen", args=[draft.pk]))
    only_event("study.reopen", researcher, draft)
    member = open_study.memberships.filter(is_paused=False).get()
    client.post(reverse("study-member-pause", args=[open_study.pk, member.pk]), {"reason": "too fast"})
    only_event("membership.pause", researcher, member, reason="too fast", study=open_study.pk)
    client.post(reverse("study-member-resume", args=[open_study.pk, member.pk]))
    only_event("membership.resume", researcher, member)
    client.post(reverse("study-report-build", args=[open_study.pk]), {"format": "csv"})
    report = Report.objects.latest("pk")
    only_event("report.request", researcher, report, format="csv", study=open_study.pk)


def test_overview_jobs_and_new_study_actions_are_recorded(fresh_log, researcher):
    site, client = fresh_log, web_as(researcher)
    client.post(reverse("study-report-request", args=[site["open"].pk]), {"format": "json"})
    only_event("report.request", researcher, Report.objects.latest("pk"), format="json")
    client.post(reverse("job-retry", args=["generation", site["failed"].pk]))
    only_event("generation_job.retry", researcher, site["failed"])
    client.post(reverse("job-cancel", args=["generation", site["running"].pk]))
    only_event("generation_job.cancel", researcher, site["running"])
    draft = site["draft"]
    (newcomer,) = annotators(1, prefix="new")
    made = client.post(reverse("study-create"), {
        "kind": "pairwise", "name": "made here", "dataset": draft.dataset_id,
        "checkpoints": list(draft.checkpoints.values_list("pk", flat=True)), "pairing": "matched",
        "redundancy": 1, "gold_share": 0, "item_order": "closest", "members": [newcomer.pk], "action": "create"})
    assert made.status_code == 302
    study = Study.objects.get(name="made here")
    only_event("study.create", researcher, study, kind="pairwise")
    only_event("study.members_add", researcher, study, usernames=[newcomer.username])
    client.post(reverse("study-create"), {  # a preview makes and rolls back: nothing recorded
        "kind": "pairwise", "name": "previewed", "dataset": draft.dataset_id,
        "checkpoints": list(draft.checkpoints.values_list("pk", flat=True)), "pairing": "matched",
        "redundancy": 1, "gold_share": 0, "item_order": "closest", "action": "preview"})
    assert AuditEvent.objects.filter(action="study.create").count() == 1


def test_api_actions_are_recorded_with_the_token_user(fresh_log, researcher):
    site = fresh_log
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=researcher).key}")
    draft = site["draft"]
    assert api.post(reverse("api-study-open", args=[draft.pk])).status_code == 200
    only_event("study.open", researcher, draft)
    assert api.post(reverse("api-study-close", args=[draft.pk])).status_code == 200
    only_event("study.close", researcher, draft)
    (newcomer,) = annotators(1, prefix="api")
    api.post(reverse("api-study-members", args=[draft.pk]), {"usernames": [newcomer.username]}, format="json")
    only_event("study.members_add", researcher, draft, usernames=[newcomer.username])
    made = api.post(reverse("api-studies"), {"name": "by api", "kind": "pairwise", "dataset": draft.dataset_id,
                                             "checkpoints": list(draft.checkpoints.values_list("pk", flat=True))},
                    format="json")
    assert made.status_code == 201
    only_event("study.create", researcher, Study.objects.get(name="by api"))
    registered = api.post(reverse("api-checkpoints"), {"name": "procedural-x", "backend": "procedural",
                                                       "config": {"error_rate": 0.2}}, format="json")
    assert registered.status_code == 201
    only_event("checkpoint.register", researcher, Checkpoint.objects.get(name="procedural-x"))
    assert api.post(reverse("api-checkpoints"), {"name": "procedural-x", "backend": "procedural",
                                                 "config": {"error_rate": 0.2}}, format="json").status_code == 201
    assert AuditEvent.objects.filter(action="checkpoint.register").count() == 1  # the same one: nothing new
    # (Tasks are queued on commit, which a test's transaction never reaches: nothing runs.)
    job = api.post(reverse("api-generation-jobs"), {"checkpoint": site["checkpoint"].pk,
                                                     "dataset": site["open"].dataset_id, "seeds": [5]}, format="json")
    assert job.status_code == 201, job.content
    only_event("generation_job.create", researcher, GenerationJob.objects.get(pk=job.json()["id"]))
    assert api.post(reverse("api-scoring-job-retry", args=[site["scoring"].pk])).status_code == 200
    only_event("scoring_job.retry", researcher, site["scoring"])
    assert api.post(reverse("api-generation-job-cancel", args=[site["running"].pk])).status_code == 200
    only_event("generation_job.cancel", researcher, site["running"])


def test_admin_adds_changes_deletions_and_actions_are_recorded(fresh_log, researcher):
    site, client = fresh_log, web_as(researcher)
    added = client.post(reverse("admin:annotate_dataset_add"), {"name": "added in admin", "source": "custom",
                                                                "category": "", "description": ""})
    assert added.status_code == 302
    dataset = Dataset.objects.get(name="added in admin")
    only_event("admin.add", researcher, dataset)
    client.post(reverse("admin:annotate_dataset_change", args=[dataset.pk]),
                {"name": "renamed in admin", "source": "custom", "category": "", "description": ""})
    assert only_event("admin.change", researcher, dataset).details["message"] == [{"changed": {"fields": ["Name"]}}]
    prompt = Prompt.objects.create(dataset=dataset, text="to delete", source_index=0)
    client.post(reverse("admin:annotate_prompt_delete", args=[prompt.pk]), {"post": "yes"})
    only_event("admin.delete", researcher)
    assert AuditEvent.objects.get(action="admin.delete").target_repr == "to delete"
    client.post(reverse("admin:annotate_study_changelist"),
                {"action": "close_studies", "_selected_action": [site["open"].pk]})
    only_event("admin.action", researcher, name="close_studies", ids=[str(site["open"].pk)])
    only_event("study.close", researcher, site["open"])
    # An add through a service is recorded as what the service made, not a second time.
    client.post(reverse("admin:annotate_checkpoint_add"), {"name": "admin-ckpt", "backend": "procedural",
                                                           "location": "", "base_model": "",
                                                           "config": '{"error_rate": 0.1}', "description": ""})
    only_event("checkpoint.register", researcher, Checkpoint.objects.get(name="admin-ckpt"))
    assert not AuditEvent.objects.filter(action="admin.add", target_type="annotate.checkpoint").exists()
    # Who is a researcher is changed in the auth app's admin (superusers): recorded too.
    from django.contrib.auth.models import Group, User

    boss = User.objects.create_superuser("boss", password="boss-pass-123")
    group = Group.objects.get(name="researchers")
    AuditEvent.objects.filter(action="admin.change").delete()
    changed = web_as(boss).post(reverse("admin:auth_group_change", args=[group.pk]), {"name": "staff researchers"})
    assert changed.status_code == 302
    only_event("admin.change", boss, group)


def test_sign_ins_are_recorded_and_annotators_work_is_not(leased, researcher):
    AuditEvent.objects.all().delete()
    client = Client()
    sign_in(client, "res", "wrong", ip="192.0.2.1")
    failed = only_event("login.failed", None)
    assert (failed.actor_name, failed.ip, failed.details) == ("res", "192.0.2.1", {})
    sign_in(client, "res", "res-pass-123", ip="192.0.2.2")
    assert only_event("login", researcher, researcher).ip == "192.0.2.2"
    study, item = leased["study"], leased["item"]
    api = APIClient()
    api.force_login(leased["member"])
    AuditEvent.objects.filter(action="login").delete()
    before = AuditEvent.objects.count()
    api.post(reverse("api-submit", args=[study.public_id]),
             {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "choice": "left"}, format="json")
    api.post(reverse("api-undo", args=[study.public_id]), {}, format="json")
    api.post(reverse("api-skip", args=[study.public_id]),
             {"item": item["item"], "lease": item["lease"], "client_id": str(uuid.uuid4()), "reason": "unsure"}, format="json")
    api.post(reverse("api-next", args=[study.public_id]), {}, format="json")
    api.get(leased["url"])
    assert AuditEvent.objects.count() == before


def test_the_log_is_read_only_in_the_admin_with_filters_and_search(fresh_log, researcher):
    client = web_as(researcher)
    client.post(reverse("study-open", args=[fresh_log["draft"].pk]))
    event = AuditEvent.objects.get(action="study.open")
    listing = client.get(reverse("admin:annotate_auditevent_changelist"))
    assert listing.status_code == 200 and b"study.open" in listing.content
    filters = {spec.title for spec in listing.context["cl"].filter_specs}
    assert {"action", "actor"} <= filters
    assert client.get(reverse("admin:annotate_auditevent_changelist"), {"action": "study.open",
                                                                       "actor": researcher.pk}).status_code == 200
    found = client.get(reverse("admin:annotate_auditevent_changelist"), {"q": "study.open"})
    assert list(found.context["cl"].result_list) == [event]
    assert client.get(reverse("admin:annotate_auditevent_add")).status_code == 403
    change_url = reverse("admin:annotate_auditevent_change", args=[event.pk])
    assert client.get(change_url).status_code == 200  # a view, without a save button
    assert client.post(change_url, {"action": "nothing"}).status_code == 403
    assert client.post(reverse("admin:annotate_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.action == "study.open"


def test_an_image_whose_file_is_gone_is_a_404_and_the_log_names_the_file(leased, caplog):
    """A row whose file was moved or deleted: the annotator gets a 404 (never a 500), the log
    says which image and file, and the other side of the pair is still served."""
    study, url = leased["study"], leased["url"]
    served = b"".join(web_as(leased["member"]).get(url).streaming_content)
    image = Image.objects.get(pk=int(served.rsplit(b" ", 1)[1]))  # the fixture wrote its pk into it
    (leased["media_root"] / image.file.name).unlink()
    with caplog.at_level("WARNING", logger="annotate.views"):
        gone = web_as(leased["member"]).get(url)
    assert gone.status_code == 404
    assert any(image.file.name in r.getMessage() and f"study {study.pk}" in r.getMessage() for r in caplog.records)
    other_side = leased["item"]["images"][1]["url"]
    assert web_as(leased["member"]).get(other_side).status_code == 200
