"""A real Celery worker process consumes a task from the configured broker and writes to the
configured database: the file-system broker and SQLite by default, Redis and PostgreSQL in
CI's service pass."""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from annotate.models import Checkpoint, Dataset, GenerationJob, Image, Prompt
from annotate.services.generation import generation_job_create
from webapp.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    cfg = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{cfg['NAME']}"
    auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg["PASSWORD"] else "")
    return f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


def start_worker(media_root, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings.test",
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(media_root),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--queues", "gpu,cpu", "--pool", "solo",
             "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


@pytest.fixture
def not_eager():
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    celery_app.control.purge()  # nothing left over from an earlier, interrupted run
    yield
    celery_app.conf.task_always_eager = eager


@pytest.fixture
def worker(media_root, not_eager):
    log = media_root.parent / "worker.log"
    proc = start_worker(media_root, log)
    try:
        yield proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for(job, proc, seconds: float, until) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if until(job) or proc.poll() is not None:
            return
        time.sleep(0.1)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_process_runs_a_generation_job_from_the_broker(worker):
    proc, log = worker
    dataset = Dataset.objects.create(name="scenes")
    Prompt.objects.create(dataset=dataset, text="a realistic photo of three apples", source_index=0)
    ckpt = Checkpoint.objects.create(name="careful", backend="procedural", config={"error_rate": 0.1})
    job = generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0, 1], images_per_seed=2,
                                width=64, height=64)
    wait_for(job, proc, 90, lambda j: j.status in ("succeeded", "failed"))
    assert job.status == "succeeded", log.read_text()[-3000:]
    assert Image.objects.filter(job=job).count() == 4 == job.done_images
    # The row says succeeded from inside the task; Celery logs "Task ... succeeded in" once it returns.
    deadline = time.monotonic() + 15
    while "succeeded in" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "generation_job_run" in log.read_text() and "succeeded in" in log.read_text(), log.read_text()[-3000:]
    assert GenerationJob.objects.get(pk=job.pk).finished_at is not None


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_job_and_restarted_completes_it_without_duplicates(media_root, not_eager):
    """SIGKILL in the middle of a job: the images made so far stay; the job, run again on a new
    worker (as a redelivery or the retry button does), makes only the rest."""
    import signal

    from workers.tasks import generation_job_run

    dataset = Dataset.objects.create(name="scenes")
    Prompt.objects.bulk_create([Prompt(dataset=dataset, text=f"a realistic photo of {n} cups", source_index=n)
                                for n in range(1, 31)])
    ckpt = Checkpoint.objects.create(name="careful", backend="procedural", config={"error_rate": 0.1,
                                                                                   "batch_size": 4})
    job = generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0, 1, 2], images_per_seed=2,
                                width=256, height=256)  # 180 images
    log = media_root.parent / "worker.log"
    first = start_worker(media_root, log)
    try:
        wait_for(job, first, 90, lambda j: j.done_images >= 8)
        assert 8 <= job.done_images < job.total_images, log.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    made_before = Image.objects.filter(job=job).count()
    assert 0 < made_before < 180
    second = start_worker(media_root, log)
    try:
        generation_job_run.delay(job.id)
        wait_for(job, second, 120, lambda j: j.status == "succeeded" and j.done_images == 180)
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert job.status == "succeeded" and job.done_images == 180, log.read_text()[-3000:]
    images = Image.objects.filter(job=job)
    assert images.count() == 180
    assert images.values("prompt", "seed", "index").distinct().count() == 180
    assert len(set(images.values_list("file", flat=True))) == 180
    for image in images.order_by("?")[:20]:  # the files are whole, and what the rows say
        with image.file.open("rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == image.sha256


@pytest.mark.postgres
@pytest.mark.django_db
def test_database_is_postgresql_with_partial_unique_indexes():
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'image_unique_imported'")
        (indexdef,) = cursor.fetchone()
    assert "WHERE (checkpoint_id IS NULL)" in indexdef


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_skip_locked_is_available_for_the_assignment_engine():
    from django.db import transaction

    dataset = Dataset.objects.create(name="locks")
    with transaction.atomic():
        locked = list(Dataset.objects.select_for_update(skip_locked=True).filter(pk=dataset.pk))
    assert locked == [dataset]


@pytest.mark.redis
def test_broker_is_redis_and_answers():
    import redis

    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert redis.Redis.from_url(settings.CELERY_BROKER_URL).ping() is True
