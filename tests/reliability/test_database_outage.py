"""The database down or restarting: clients get 503 with Retry-After (JSON under /api/, a page
elsewhere), never a 500 page; the broken connection is dropped so the next request opens a
new one; and, on PostgreSQL with its backends terminated again and again under load, every
judgment a client was told is stored is stored exactly once, counters included."""
import http.client
import json
import threading
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.db.utils import InterfaceError, OperationalError
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotate import selectors
from annotate.models import Judgment
from annotate.services import annotation
from tests.factories import annotators, open_pairwise
from tests.reliability.faults import BackendTerminator, api_client, check_study_consistent

TERMINATED = OperationalError("terminating connection due to administrator command")


def _assert_unavailable_json(response) -> None:
    assert response.status_code == 503, response.content[:500]
    assert response["Retry-After"].isdigit() and response["Content-Type"] == "application/json"
    assert response.json()["error"] == "unavailable"
    assert b"Traceback" not in response.content


@pytest.mark.django_db(transaction=True)
def test_an_api_view_that_meets_a_dead_database_answers_503_json_and_drops_the_connection(monkeypatch):
    user, = annotators(1)
    study = open_pairwise(members=[user], prompts=2, per_prompt=1, redundancy=1)
    client = api_client(user)
    shown = client.post(reverse("api-next", args=[study.public_id]), {}, format="json").json()

    def dead(**kwargs):
        connection.ensure_connection()
        raise TERMINATED

    monkeypatch.setattr(annotation, "judgment_submit", dead)
    body = {"item": shown["item"], "lease": shown["lease"], "client_id": str(uuid.uuid4()), "choice": "left"}
    _assert_unavailable_json(client.post(reverse("api-submit", args=[study.public_id]), body, format="json"))
    assert connection.connection is None  # dropped: the next request opens a new one
    monkeypatch.undo()
    assert client.post(reverse("api-submit", args=[study.public_id]), body, format="json").status_code == 201
    assert Judgment.objects.count() == 1


@pytest.mark.django_db
def test_a_page_that_meets_a_dead_database_answers_a_503_page(client, annotator, monkeypatch):
    study = open_pairwise(members=[annotator], prompts=2, per_prompt=1, redundancy=1)
    client.force_login(annotator)

    def dead(**kwargs):
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(selectors, "annotator_study_get", dead)
    response = client.get(reverse("annotate-study", args=[study.public_id]))
    assert response.status_code == 503 and response["Retry-After"].isdigit()
    assert response["Content-Type"].startswith("text/html") and b"Back in a moment" in response.content
    json_response = client.get(reverse("annotate-study", args=[study.public_id]), HTTP_ACCEPT="application/json")
    _assert_unavailable_json(json_response)


class _DeadDatabaseMiddleware:
    """A middleware that meets the dead database before any view runs (as sessions' does)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.headers.get("X-Test-Fault") == "database":
            raise TERMINATED
        if request.headers.get("X-Test-Fault") == "cache":
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        if request.headers.get("X-Test-Fault") == "bug":
            raise ValueError("a bug, not an outage")
        return self.get_response(request)


@pytest.mark.django_db
def test_a_middleware_that_meets_a_dead_database_or_cache_answers_503_and_other_errors_stay_500(settings, annotator):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE[:3], f"{__name__}._DeadDatabaseMiddleware", *settings.MIDDLEWARE[3:]]
    client = Client(raise_request_exception=False)
    _assert_unavailable_json(client.get("/api/annotate/", HTTP_X_TEST_FAULT="database"))
    page = client.get("/healthz", HTTP_X_TEST_FAULT="database")
    assert page.status_code == 503 and page["Content-Type"].startswith("text/html")
    _assert_unavailable_json(client.get("/api/annotate/", HTTP_X_TEST_FAULT="cache"))
    bug = client.get("/healthz", HTTP_X_TEST_FAULT="bug")
    assert bug.status_code == 500 and "Retry-After" not in bug


@pytest.mark.django_db(transaction=True)
def test_a_job_whose_database_went_away_mid_run_is_run_again_and_finishes(monkeypatch):
    """The worker's connection dies between two batches (a restart): the task waits, runs the
    job again on a new connection, and it makes only what was missing."""
    from annotate.models import Checkpoint, Dataset, GenerationJob, Image, Prompt
    from annotate.services.generation import generation_job_create
    from workers import jobs as worker_jobs
    from workers import tasks

    monkeypatch.setattr(tasks, "DATABASE_RETRY_DELAYS_S", (0.01, 0.01))
    real_write = worker_jobs._write_rows
    calls = []

    def write_then_lose_the_database(job, stored):
        calls.append(len(stored))
        if len(calls) == 2:
            raise TERMINATED
        return real_write(job, stored)

    monkeypatch.setattr(worker_jobs, "_write_rows", write_then_lose_the_database)
    dataset = Dataset.objects.create(name="scenes")
    Prompt.objects.bulk_create([Prompt(dataset=dataset, text=f"a photo of {n} cups", source_index=n) for n in range(6)])
    checkpoint = Checkpoint.objects.create(name="careful", backend="procedural", config={"batch_size": 2})
    job = generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[0], width=32, height=32)  # inline
    job.refresh_from_db()
    assert (job.status, job.done_images, job.error) == ("succeeded", 6, "")
    assert Image.objects.filter(job=job).values("prompt", "seed", "index").distinct().count() == 6
    assert GenerationJob.objects.count() == 1


# --- PostgreSQL under load while its backends are terminated ---------------------------------

class Annotator(threading.Thread):
    """An annotator's client as annotate.js behaves: next, then submit; a 503 or a dropped
    connection is retried after its Retry-After (shortened here), a submit with the same
    client_id. Records every response."""

    def __init__(self, base: str, token: str, study: str, stop: threading.Event, statuses: Counter,
                 bad: list, acked: set, uncertain: set):
        super().__init__(daemon=True)
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.token, self.study, self.stop = token, study, stop
        self.statuses, self.bad, self.acked, self.uncertain = statuses, bad, acked, uncertain

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        endpoint = path.rstrip("/").rsplit("/", 1)[1]
        for attempt in range(200):
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("POST", path, json.dumps(body), {"Authorization": f"Token {self.token}",
                                                              "Content-Type": "application/json"})
                response = conn.getresponse()
                status, raw, retry_after = response.status, response.read(), response.getheader("Retry-After")
                conn.close()
            except (OSError, http.client.HTTPException):
                self.statuses[(endpoint, "network")] += 1
                time.sleep(0.05)
                continue
            self.statuses[(endpoint, status)] += 1
            if status in (200, 201):
                return status, json.loads(raw)
            if status != 503 or not (retry_after or "").isdigit() or b'"unavailable"' not in raw:
                self.bad.append((path, status, raw[:300]))
                return status, {}
            time.sleep(0.02 * (attempt % 5 + 1))  # Retry-After says 2 s; the test cannot wait that long
        raise AssertionError(f"{path}: still unavailable after 200 tries")

    def run(self):
        base = f"/api/annotate/{self.study}/"
        while not self.stop.is_set():
            status, item = self.post(base + "next/", {})
            if status != 200 or item.get("done"):
                return
            client_id = str(uuid.uuid4())
            self.uncertain.add(client_id)
            status, _ = self.post(base + "submit/", {"item": item["item"], "lease": item["lease"], "client_id": client_id,
                                                     "choice": "left"})
            if status in (200, 201):
                self.acked.add(client_id)
                self.uncertain.discard(client_id)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_backends_terminated_under_load_give_503s_and_every_judgment_once(live_server):
    users = annotators(6)
    study = open_pairwise(members=users, prompts=15, per_prompt=2, redundancy=3)  # 30 items, 90 judgments
    tokens = [Token.objects.get_or_create(user=u)[0].key for u in users]
    stop, statuses, bad, acked, uncertain = threading.Event(), Counter(), [], set(), set()
    clients = [Annotator(live_server.url, token, str(study.public_id), stop, statuses, bad, acked, uncertain)
               for token in tokens]
    with BackendTerminator(every=0.1, blocked_s=0.5) as terminator:
        for c in clients:
            c.start()
        deadline = time.monotonic() + 40
        while any(c.is_alive() for c in clients) and time.monotonic() < deadline:
            time.sleep(0.1)
    stop.set()
    for c in clients:
        c.join(timeout=30)
    connection.close()  # the test's own connection was terminated too
    print(f"terminated {terminator.terminated} backends in {terminator.rounds} rounds; responses {dict(statuses)}")
    assert not bad, bad[:5]  # every answer was a 2xx or a 503 with Retry-After and a JSON body
    assert not any(status == 500 for _, status in statuses)
    # The faults hit both endpoints: submissions were sent again after a 503.
    assert terminator.terminated > 0 and statuses[("next", 503)] > 0 and statuses[("submit", 503)] > 0, statuses
    assert not uncertain, "every submission ended acknowledged"
    stored = Counter(str(c) for c in Judgment.objects.filter(item__study=study).values_list("client_id", flat=True))
    assert set(stored) == acked and set(stored.values()) == {1}
    assert len(acked) == 90  # the study was completed
    check_study_consistent(study)
