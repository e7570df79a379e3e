"""A real Celery worker process consumes a task from the configured broker and writes to the
configured database: the file-system broker and SQLite by default, Redis and PostgreSQL in
CI's service pass."""
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


@pytest.fixture
def worker(media_root):
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    celery_app.control.purge()  # nothing left over from an earlier, interrupted run
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings.test",
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(media_root),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    log = media_root.parent / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--queues", "gpu,cpu", "--pool", "solo",
             "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            yield proc, log
        finally:
            celery_app.conf.task_always_eager = eager
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_process_runs_a_generation_job_from_the_broker(worker):
    proc, log = worker
    dataset = Dataset.objects.create(name="scenes")
    Prompt.objects.create(dataset=dataset, text="a realistic photo of three apples", source_index=0)
    ckpt = Checkpoint.objects.create(name="careful", backend="procedural", config={"error_rate": 0.1})
    job = generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0, 1], images_per_seed=2,
                                width=64, height=64)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in ("succeeded", "failed") or proc.poll() is not None:
            break
        time.sleep(0.3)
    assert job.status == "succeeded", log.read_text()[-3000:]
    assert Image.objects.filter(job=job).count() == 4 == job.done_images
    assert "generation_job_run" in log.read_text() and "succeeded" in log.read_text()
    assert GenerationJob.objects.get(pk=job.pk).finished_at is not None


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
