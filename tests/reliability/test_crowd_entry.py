"""Crowd entry by a study's link (annotate/services/crowd.py, views.crowd_start): the person
signed in is the one whose browser started the worker id; accounts cannot be minted from one
address; ids have the platform's format; each worker has a code of their own that the
researcher sees. Runs in both passes (SQLite, and PostgreSQL where an over-long value was a
DataError)."""
import csv
import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotate.models import AuditEvent, StudyMembership
from annotate.services.crowd import CODE_LENGTH
from annotate.views import CROWD_COOKIE
from tests.factories import open_pairwise

pytestmark = pytest.mark.django_db

PID = "60a7f0c1e2b3d4a5f6e7d8c9"  # Prolific's format: 24 hex characters


@pytest.fixture
def study():
    return open_pairwise(crowd_link=True, items_per_annotator=2, prompts=3, per_prompt=1)


def link(study) -> str:
    return reverse("crowd-start", args=[study.public_id])


def join(client, study, worker_id=PID, address="198.51.100.7", **params):
    params = {"PROLIFIC_PID": worker_id, "STUDY_ID": "s1", "SESSION_ID": "x1", **params}
    return client.get(link(study), params, REMOTE_ADDR=address)


def signed_in_as(client):
    return client.session.get("_auth_user_id")


def sign_out(client):
    """The session ends (expired, signed out); the browser keeps its other cookies."""
    client.post(reverse("logout"))
    assert signed_in_as(client) is None and CROWD_COOKIE in client.cookies


def test_a_second_browser_with_a_live_worker_id_is_refused_and_audited_while_the_first_keeps_working(study):
    first = Client()
    assert join(first, study).status_code == 302
    cookie = first.cookies[CROWD_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == link(study)
    worker = get_user_model().objects.get(pk=signed_in_as(first))

    no_cookie, wrong_cookie = Client(), Client()
    wrong_cookie.cookies[CROWD_COOKIE] = "A" * 43  # well-formed, not the worker's
    for intruder in (no_cookie, wrong_cookie):
        refused = join(intruder, study, address="203.0.113.9")
        assert refused.status_code == 403 and "already in use in another browser" in refused.content.decode()
        assert signed_in_as(intruder) is None
    events = AuditEvent.objects.filter(action="crowd.refused").order_by("pk")
    assert [(e.details["worker_id"], e.details["reason"], e.ip) for e in events] == [
        (PID, "another_browser", "203.0.113.9")] * 2

    next_item = first.post(reverse("api-next", args=[study.public_id]), {}, content_type="application/json")
    assert next_item.status_code == 200
    sign_out(first)  # the same browser comes back by the link: signed in again, as the same worker
    assert join(first, study).status_code == 302 and signed_in_as(first) == str(worker.pk)


def test_the_browser_cookie_is_secure_over_https(study):
    client = Client()
    assert client.get(link(study), {"PROLIFIC_PID": PID}, secure=True).status_code == 302
    assert client.cookies[CROWD_COOKIE]["secure"]


def test_new_accounts_are_limited_per_address_and_per_link(study, settings):
    settings.CALIBRA_CROWD_JOIN_WINDOW_S = 10**9  # one window for the whole test
    browsers = [Client() for _ in range(6)]
    for k, browser in enumerate(browsers[:5]):
        assert join(browser, study, worker_id=f"worker{k}").status_code == 302
    refused = join(browsers[5], study, worker_id="worker5")
    assert refused.status_code == 429 and "Too many new accounts" in refused.content.decode()
    assert not get_user_model().objects.filter(username__endswith="-worker5").exists()
    sign_out(browsers[0])
    assert join(browsers[0], study, worker_id="worker0").status_code == 302  # returning: no new account
    assert join(Client(), study, worker_id="worker5", address="198.51.100.8").status_code == 302

    settings.CALIBRA_CROWD_JOINS_PER_LINK = 6  # six made so far: the link takes no more, from any address
    refused = join(Client(), study, worker_id="worker6", address="198.51.100.9")
    assert refused.status_code == 429
    refusals = AuditEvent.objects.filter(action="crowd.refused").order_by("pk")
    assert [e.details["reason"] for e in refusals] == ["new_accounts_per_address", "new_accounts_per_link"]


def test_addresses_of_one_ipv6_host_count_as_one(study, settings):
    settings.CALIBRA_CROWD_JOIN_WINDOW_S = 10**9
    for k in range(5):  # a host holds its whole /64
        assert join(Client(), study, worker_id=f"v6w{k}", address=f"2001:db8:0:1::{k + 1}").status_code == 302
    assert join(Client(), study, worker_id="v6w5", address="2001:db8:0:1::99").status_code == 429
    assert join(Client(), study, worker_id="v6w5", address="2001:db8:0:2::1").status_code == 302


@pytest.mark.parametrize("worker_id", [
    "60a7f0c1e2b3d4a5f6e7d8с9",  # a Cyrillic "с" among the hex
    "６0a7f0c1e2b3d4a5f6e7d8c9",  # a full-width digit
    "a" * 65,
    "-1+2",  # would start a formula in the researcher's CSV
    "pid\x00",
    "pid 1",
    "",
])
def test_worker_ids_outside_the_documented_format_are_refused(study, worker_id):
    users = get_user_model().objects.count()
    refused = join(Client(), study, worker_id=worker_id)
    assert refused.status_code == 400 and "PROLIFIC_PID" in refused.content.decode()
    assert get_user_model().objects.count() == users


@pytest.mark.parametrize("name, value", [("SESSION_ID", "x" * 300), ("SESSION_ID", "s1\x00"),
                                         ("STUDY_ID", "x" * 300), ("STUDY_ID", "\x00")])
def test_a_nul_or_over_long_session_or_study_id_is_a_400_naming_it(study, name, value):
    refused = join(Client(), study, **{name: value})
    assert refused.status_code == 400 and name in refused.content.decode()
    assert not StudyMembership.objects.filter(study=study).exists()


def test_each_worker_gets_their_own_code_and_the_researcher_sees_it(study, client, researcher):
    for k in range(2):
        assert join(Client(), study, worker_id=f"w{k}").status_code == 302
    members = list(StudyMembership.objects.filter(study=study).order_by("external_worker_id"))
    codes = [m.completion_code for m in members]
    assert len(set(codes)) == 2 and study.completion_code not in codes
    assert all(re.fullmatch(f"[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{{{CODE_LENGTH}}}", code) for code in codes)

    client.force_login(researcher)
    page = client.get(reverse("study-detail", args=[study.pk])).content.decode()
    for m in members:
        assert re.search(rf"worker {m.external_worker_id}, code <code[^>]*>{m.completion_code}</code>", page)
    download = client.get(reverse("study-crowd-workers-csv", args=[study.pk]))
    assert download.status_code == 200 and download["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(download.content.decode())))
    assert rows == [["worker_id", "username", "answered", "skipped", "gold_accuracy", "completion_code"],
                    *([m.external_worker_id, m.annotator.username, "0", "0", "", m.completion_code]
                      for m in members)]


def test_a_researcher_following_the_link_is_never_switched(study, client, researcher):
    assert join(Client(), study).status_code == 302  # the worker's account exists
    client.force_login(researcher)
    for worker_id in (PID, "someone-new"):
        response = join(client, study, worker_id=worker_id)
        assert response.status_code == 409 and "Sign out first" in response.content.decode()
        assert signed_in_as(client) == str(researcher.pk)
    assert CROWD_COOKIE not in client.cookies


def test_the_researcher_lets_a_worker_in_from_another_browser(study, client, researcher):
    old_device, new_device = Client(), Client()
    assert join(old_device, study).status_code == 302
    assert join(new_device, study).status_code == 403
    membership = StudyMembership.objects.get(study=study)
    client.force_login(researcher)
    page = client.get(reverse("study-detail", args=[study.pk])).content.decode()
    release = reverse("study-member-release-browser", args=[study.pk, membership.pk])
    assert release in page
    assert client.post(release).status_code == 302
    assert AuditEvent.objects.filter(action="crowd.browser_release", details__worker_id=PID).exists()
    assert join(new_device, study).status_code == 302  # the next browser takes the account over
    sign_out(old_device)
    assert join(old_device, study).status_code == 403


def test_one_worker_id_in_another_letter_case_is_the_same_worker(study):
    """Was a second account with a second completion code."""
    browser = Client()
    assert join(browser, study).status_code == 302
    assert join(Client(), study, worker_id=PID.upper(), address="203.0.113.9").status_code == 403
    assert join(browser, study, worker_id=PID.upper()).status_code == 302  # the same browser: the same account
    assert StudyMembership.objects.filter(study=study).count() == 1
