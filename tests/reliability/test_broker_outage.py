"""The broker down (Redis stopped): no request fails and no job is lost. Annotation never
touches the broker or the cache; a job or report asked for meanwhile is stored as queued and
sent again once the broker is back (``jobs_requeue_stale``, run by every worker and by
``manage.py requeue_jobs``); the tasks return at once for a row that is already finished."""
import io
import logging
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from annotate.models import (
    Checkpoint, Dataset, GenerationJob, Judgment, Prompt, Report, RewardModel, ScoringJob,
)
from annotate.services import jobs
from annotate.services.enqueue import enqueue, enqueue_after_commit
from annotate.services.generation import generation_job_create
from annotate.services.reports import report_request
from tests.factories import annotators, open_pairwise
from tests.integration.test_worker_process import start_worker
from tests.reliability.faults import (  # noqa: F401 - private_redis is a fixture
    api_client, celery_broker, check_study_consistent, free_port, private_redis,
)
from workers import tasks
from workers.scoring_tasks import scoring_job_run

DEAD_BROKER = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def _annotate(study, users, rounds: int) -> list[str]:
    """Each annotator asks for an item and answers it, ``rounds`` times; the client ids stored."""
    stored = []
    for user in users:
        client = api_client(user)
        for _ in range(rounds):
            item = client.post(reverse("api-next", args=[study.public_id]), {}, format="json")
            assert item.status_code == 200, item.content
            client_id = str(uuid.uuid4())
            answer = client.post(reverse("api-submit", args=[study.public_id]),
                                 {"item": item.json()["item"], "lease": item.json()["lease"], "client_id": client_id,
                                  "choice": "left"},
                                 format="json")
            assert answer.status_code == 201, answer.content
            stored.append(client_id)
    return stored


def _dead_caches(settings) -> None:
    """Every cache the settings name becomes a Redis that does not answer (production's caches
    are Redis where the broker is)."""
    settings.CACHES = {alias: {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": DEAD_BROKER,
                               "OPTIONS": {"socket_connect_timeout": 0.5}} for alias in settings.CACHES}


@pytest.mark.django_db(transaction=True)
def test_annotation_goes_on_with_the_broker_and_the_cache_down(settings):
    users = annotators(3)
    study = open_pairwise(members=users, prompts=4, per_prompt=2, redundancy=3)
    _dead_caches(settings)
    with celery_broker(DEAD_BROKER):
        stored = _annotate(study, users, rounds=3)
    assert set(Judgment.objects.values_list("client_id", flat=True)) == {uuid.UUID(c) for c in stored}
    check_study_consistent(study)


@pytest.fixture
def researcher_client(researcher):
    client = APIClient()
    client.force_authenticate(researcher)
    return client


@pytest.fixture
def generation_world():
    dataset = Dataset.objects.create(name="scenes")
    Prompt.objects.bulk_create([Prompt(dataset=dataset, text=f"a photo of {n} cups", source_index=n)
                                for n in range(3)])
    checkpoint = Checkpoint.objects.create(name="careful", backend="procedural")
    return dataset, checkpoint


@pytest.mark.django_db(transaction=True)
def test_jobs_and_reports_asked_for_while_the_broker_is_down_are_stored_queued(
        researcher_client, generation_world, caplog):
    dataset, checkpoint = generation_world
    study = open_pairwise(members=annotators(1), prompts=2, per_prompt=1, redundancy=1)
    failed = GenerationJob.objects.create(checkpoint=checkpoint, dataset=dataset, seeds=[0], status="failed",
                                          total_images=3)
    caplog.set_level(logging.WARNING, logger="annotate.services.enqueue")
    with celery_broker(DEAD_BROKER):
        started = time.monotonic()
        report = researcher_client.post(reverse("api-study-reports", args=[study.pk]), {"format": "json"},
                                        format="json")
        job = researcher_client.post(reverse("api-generation-jobs"), {
            "checkpoint": checkpoint.pk, "dataset": dataset.pk, "seeds": [0], "width": 32, "height": 32},
            format="json")
        retry = researcher_client.post(reverse("api-generation-job-retry", args=[failed.pk]))
        elapsed = time.monotonic() - started
    assert (report.status_code, job.status_code, retry.status_code) == (202, 201, 200), \
        (report.content, job.content, retry.content)
    assert Report.objects.get().status == "queued"
    assert GenerationJob.objects.get(pk=job.json()["id"]).status == "queued"
    assert GenerationJob.objects.get(pk=failed.pk).status == "queued"
    assert sum("not sent" in r.getMessage() for r in caplog.records) == 3
    assert elapsed < 10  # kombu's few publish retries, not a hung request


@pytest.mark.django_db(transaction=True)
def test_a_broker_error_is_caught_only_when_sending_not_from_a_task_run_inline(monkeypatch):
    """Inline (eager) tasks raise their own errors, an OSError included, as before."""
    def fails(*args):
        raise FileNotFoundError("the task's own error")

    monkeypatch.setattr(tasks.report_build, "run", fails)
    with pytest.raises(FileNotFoundError):
        enqueue(tasks.report_build, 1)
    with celery_broker(DEAD_BROKER):
        assert enqueue(tasks.report_build, 1) is False
        enqueue_after_commit(tasks.report_build, 1)  # outside a transaction: at once, and no error


# --- sending again -------------------------------------------------------------------------

@pytest.fixture
def sent(monkeypatch):
    """What the tasks were sent (nothing runs), with no message waiting in any queue."""
    from workers.scoring_tasks import scoring_job_run

    out = []
    for task in (tasks.generation_job_run, tasks.report_build, scoring_job_run):
        monkeypatch.setattr(task, "delay", lambda pk, _name=task.name.rsplit(".", 1)[1]: out.append((_name, pk)))
    monkeypatch.setattr(jobs, "queue_waiting", lambda task: 0)
    return out


def _age(row, seconds: float) -> None:
    type(row).objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(seconds=seconds))


@pytest.mark.django_db(transaction=True)
def test_requeue_sends_queued_rows_older_than_the_threshold_once_each(sent, generation_world):
    dataset, checkpoint = generation_world
    study = open_pairwise(members=annotators(1), prompts=2, per_prompt=1, redundancy=1)
    make = lambda status: GenerationJob.objects.create(  # noqa: E731
        checkpoint=checkpoint, dataset=dataset, seeds=[0], status=status, total_images=3)
    old, young, running, done = make("queued"), make("queued"), make("running"), make("succeeded")
    report = Report.objects.create(study=study, format="json")
    for row in (old, running, done, report):
        _age(row, 600)
    _age(young, 5)
    result = jobs.jobs_requeue_stale(older_than=60)
    assert sent == [("generation_job_run", old.pk), ("report_build", report.pk)]
    assert result.sent == {"generation": [old.pk], "scoring": [], "report": [report.pk]}
    sent.clear()
    assert jobs.jobs_requeue_stale(older_than=60, include_running=True).sent["generation"] == [old.pk, running.pk]


@pytest.mark.django_db(transaction=True)
def test_requeue_waits_while_messages_wait_in_the_queue_and_stops_when_the_broker_is_down(
        sent, generation_world, monkeypatch):
    dataset, checkpoint = generation_world
    job = GenerationJob.objects.create(checkpoint=checkpoint, dataset=dataset, seeds=[0], total_images=3)
    _age(job, 600)
    monkeypatch.setattr(jobs, "queue_waiting", lambda task: 2)
    result = jobs.jobs_requeue_stale()
    assert sent == [] and result.waiting == {"generation": 2}
    assert jobs.jobs_requeue_stale(force=True).sent["generation"] == [job.pk]
    with celery_broker(DEAD_BROKER):
        monkeypatch.undo()  # the real queue check, against a broker that is down
        result = jobs.jobs_requeue_stale()
    assert result.sent["generation"] == [] and "OperationalError" in result.broker_error
    with celery_broker(DEAD_BROKER), pytest.raises(CommandError, match="broker is unavailable"):
        call_command("requeue_jobs", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_requeue_jobs_command_and_the_workers_sweep(sent, generation_world, monkeypatch):
    from webapp import celery as celery_module

    dataset, checkpoint = generation_world
    job = GenerationJob.objects.create(checkpoint=checkpoint, dataset=dataset, seeds=[0], total_images=3)
    out = io.StringIO()
    call_command("requeue_jobs", "--older-than", "0", stdout=out)
    assert f"generation: 1 sent again ({job.pk})" in out.getvalue() and "report: 0 sent again" in out.getvalue()
    sent.clear()
    _age(job, 600)
    cache.delete("calibra:requeue-sweep")
    assert celery_module.requeue_sweep().sent["generation"] == [job.pk]
    assert celery_module.requeue_sweep() is None  # another worker swept a moment ago (the shared cache says)


@pytest.mark.django_db(transaction=True)
def test_the_worker_starts_sweeping_when_ready(sent, generation_world, settings):
    from webapp import celery as celery_module

    settings.CALIBRA_REQUEUE_EVERY_S = 0.2
    settings.CALIBRA_REQUEUE_AFTER_S = 0
    dataset, checkpoint = generation_world
    job = GenerationJob.objects.create(checkpoint=checkpoint, dataset=dataset, seeds=[0], total_images=3)
    cache.delete("calibra:requeue-sweep")
    celery_module._requeue_when_ready(sender=None)
    sweeper = next(t for t in threading.enumerate() if t.name == "calibra-requeue")
    try:
        deadline = time.monotonic() + 10
        while not sent and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        celery_module._requeue_stop(sender=None)
        sweeper.join(timeout=10)
    assert ("generation_job_run", job.pk) in sent


@pytest.mark.django_db(transaction=True)
def test_a_message_for_a_finished_row_changes_nothing(generation_world, media_root):
    """Sent twice (requeue after an outage, a redelivery): the second is a no-op."""
    dataset, checkpoint = generation_world
    study = open_pairwise(members=annotators(1), prompts=2, per_prompt=1, redundancy=1)
    report = report_request(study=study, fmt="json")  # built inline (tests run tasks eagerly)
    report.refresh_from_db()
    job = generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[0], width=32, height=32)
    job.refresh_from_db()
    assert (report.status, job.status) == ("succeeded", "succeeded")
    files = sorted(p.name for p in media_root.rglob("*") if p.is_file())
    tasks.report_build.delay(report.pk)
    tasks.generation_job_run.delay(job.pk)
    assert sorted(p.name for p in media_root.rglob("*") if p.is_file()) == files
    assert Report.objects.get(pk=report.pk).finished_at == report.finished_at
    assert GenerationJob.objects.get(pk=job.pk).finished_at == job.finished_at
    scoring = ScoringJob.objects.create(reward_model=RewardModel.objects.create(name="rm", kind="clip", location="-"),
                                        dataset=dataset, status="succeeded", finished_at=timezone.now())
    scoring_job_run.delay(scoring.pk)
    assert ScoringJob.objects.get(pk=scoring.pk).finished_at == scoring.finished_at


# --- the whole outage, with a real broker and worker ---------------------------------------

@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_redis_stopped_while_annotators_work_and_jobs_resume_when_it_returns(
        private_redis, settings, media_root, researcher_client, generation_world, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="annotate.services.enqueue")
    dataset, checkpoint = generation_world
    users = annotators(3)
    study = open_pairwise(members=users, prompts=4, per_prompt=2, redundancy=3)
    settings.CELERY_BROKER_URL = private_redis.url  # the worker's broker (start_worker reads it)
    log = media_root.parent / "worker.log"
    with celery_broker(private_redis.url):
        worker = start_worker(media_root, log)
        try:
            _wait_for_log(log, "ready.", worker, 60)
            private_redis.kill()  # the outage
            stored = _annotate(study, users, rounds=3)
            report = researcher_client.post(reverse("api-study-reports", args=[study.pk]), {"format": "json"},
                                            format="json")
            job = researcher_client.post(reverse("api-generation-jobs"), {
                "checkpoint": checkpoint.pk, "dataset": dataset.pk, "seeds": [0, 1], "width": 32, "height": 32},
                format="json")
            assert (report.status_code, job.status_code) == (202, 201), (report.content, job.content)
            report, job = Report.objects.get(pk=report.json()["id"]), GenerationJob.objects.get(pk=job.json()["id"])
            assert (report.status, job.status) == ("queued", "queued")
            assert sum("not sent" in r.getMessage() for r in caplog.records) == 2

            private_redis.start()  # back, empty: what was sent before the outage is gone too
            result = jobs.jobs_requeue_stale(older_than=0)
            assert result.sent == {"generation": [job.pk], "scoring": [], "report": [report.pk]}, result
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and worker.poll() is None:
                report.refresh_from_db()
                job.refresh_from_db()
                if report.status == job.status == "succeeded":
                    break
                time.sleep(0.2)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert (report.status, job.status) == ("succeeded", "succeeded"), log.read_text()[-3000:]
    assert job.done_images == job.total_images == 6
    assert set(Judgment.objects.values_list("client_id", flat=True)) == {uuid.UUID(c) for c in stored}
    check_study_consistent(study)


def _wait_for_log(log, text: str, proc, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"worker: no {text!r} in its log:\n" + (log.read_text()[-3000:] if log.exists() else ""))
