import hashlib
import io
import os
import threading
import time
from collections import Counter

import pytest
from django.core.files.storage import default_storage

from annotate.models import Checkpoint, Dataset, GenerationJob, Image, Prompt
from annotate.services.generation import generation_job_create
from workers import jobs
from workers.jobs import generation_chunk_execute, generation_job_dispatch, generation_job_execute
from workers.ml import backends
from workers.ml.backends import ProceduralBackend

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dataset():
    ds = Dataset.objects.create(name="scenes")
    for i, text in enumerate(["a realistic photo of two cups", "a realistic photo of a cat and a chair"]):
        Prompt.objects.create(dataset=ds, text=text, source_index=i)
    return ds


def make_job(dataset, name="careful", backend="procedural", **kw) -> GenerationJob:
    ckpt = Checkpoint.objects.create(name=name, backend=backend, location="/nowhere" if backend != "procedural" else "",
                                     config={"error_rate": 0.2})
    return generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0, 1], images_per_seed=3,
                                 width=64, height=64, **kw)


def test_job_makes_every_image_once_with_progress(dataset):
    job = make_job(dataset)  # tasks run inline in tests, after commit
    job.refresh_from_db()
    assert job.status == "succeeded" and (job.done_images, job.total_images) == (12, 12)
    images = Image.objects.filter(job=job)
    assert images.count() == 12
    assert {(i.seed, i.index) for i in images} == {(s, i) for s in (0, 1) for i in range(3)}
    one = images.first()
    with default_storage.open(one.file.name) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == one.sha256
    assert (one.width, one.height) == (64, 64)


def test_rerun_makes_only_missing_images_with_the_same_pixels(dataset):
    job = make_job(dataset)
    victim = Image.objects.get(job=job, seed=1, index=2, prompt__source_index=0)
    sha, name = victim.sha256, victim.file.name
    victim.delete()
    assert generation_job_execute(job.id) == 1
    again = Image.objects.get(job=job, seed=1, index=2, prompt__source_index=0)
    assert again.sha256 == sha and again.file.name == name
    assert generation_job_execute(job.id) == 0
    assert Image.objects.filter(job=job).count() == 12


def test_failure_is_recorded_on_the_job(dataset):
    with pytest.raises(Exception, match="checkpoint location /nowhere does not exist"):
        make_job(dataset, name="real", backend="diffusers")
    job = GenerationJob.objects.get(checkpoint__name="real")
    assert job.status == "failed" and "CheckpointError: checkpoint location /nowhere does not exist" in job.error


def test_job_is_enqueued_only_after_commit(dataset, django_capture_on_commit_callbacks):
    from django.db import transaction

    with transaction.atomic():
        job = make_job(dataset, name="later")
        assert not Image.objects.filter(job=job).exists()
    job.refresh_from_db()
    assert job.status == "succeeded"


def test_bad_seeds_are_refused(dataset):
    ckpt = Checkpoint.objects.create(name="x", backend="procedural")
    with pytest.raises(ValueError, match="seeds"):
        generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[])
    assert not GenerationJob.objects.exists()


def test_unknown_scheduler_is_refused_at_creation(dataset):
    ckpt = Checkpoint.objects.create(name="x", backend="procedural")
    with pytest.raises(ValueError, match=r"scheduler 'fancy' is not one of .*\(field: scheduler\)"):
        generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0], scheduler="fancy")
    assert not GenerationJob.objects.exists()


def assert_complete_without_duplicates(job, expected: int):
    keys = list(Image.objects.filter(checkpoint=job.checkpoint).values_list("prompt_id", "seed", "index"))
    assert len(keys) == len(set(keys)) == expected
    for image in Image.objects.filter(checkpoint=job.checkpoint):
        with default_storage.open(image.file.name) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == image.sha256
    job.refresh_from_db()
    assert (job.status, job.done_images, job.total_images) == ("succeeded", expected, expected)


class Scripted:
    """The procedural backend, slowed down or made to crash, recording what it was asked."""

    compiled = False

    def __init__(self, crash_on_call=None, delay=0.0, watch_job=None):
        self.inner, self.calls, self.seen_progress = ProceduralBackend(0.2), 0, []
        self.crash_on_call, self.delay, self.watch_job = crash_on_call, delay, watch_job
        self.made = Counter()

    def warm_up(self, params, batch_size):
        return 0.0

    def generate(self, prompts, seeds, params):
        self.calls += 1
        if self.watch_job is not None:
            self.seen_progress.append(GenerationJob.objects.get(pk=self.watch_job).done_images)
        if self.calls == self.crash_on_call:
            raise RuntimeError("worker lost its GPU")
        time.sleep(self.delay)
        self.made.update(seeds)
        return self.inner.generate(prompts, seeds, params)


def queued_job(dataset, name="chunked") -> GenerationJob:
    ckpt = Checkpoint.objects.create(name=name, backend="procedural", config={"error_rate": 0.2})
    return generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[0, 1], images_per_seed=3,
                                 width=32, height=32, enqueue=False)


def test_crash_mid_job_keeps_progress_and_a_rerun_makes_only_the_rest(dataset, monkeypatch):
    job = queued_job(dataset)
    crashing = Scripted(crash_on_call=3, watch_job=job.id)
    monkeypatch.setattr(jobs, "get_backend", lambda *a, **k: crashing)
    with pytest.raises(RuntimeError, match="lost its GPU"):
        generation_job_execute(job.id, batch_size=2)
    job.refresh_from_db()
    assert job.status == "failed" and "RuntimeError: worker lost its GPU" in job.error
    assert job.done_images == Image.objects.filter(job=job).count() == 4  # two batches were written
    assert crashing.seen_progress[0] == 0 and crashing.seen_progress[-1] >= 2  # visible as it went
    monkeypatch.setattr(jobs, "get_backend", lambda *a, **k: Scripted())
    assert generation_job_execute(job.id, batch_size=2) == 8
    assert_complete_without_duplicates(job, 12)


def test_large_job_fans_out_into_chunks_that_cover_it_once(dataset, settings):
    settings.CALIBRA_GENERATION_CHUNK_SIZE = 5
    job = make_job(dataset, name="fanned")  # 12 images: chunks of 5, 5, 2, run inline in tests
    assert_complete_without_duplicates(job, 12)
    first, last = (Image.objects.filter(job=job).order_by("prompt__source_index", "seed", "index")[i]
                   for i in (0, 11))
    first.delete()
    last.delete()
    assert generation_job_dispatch(job.id) == [0, 2]  # only the chunks with missing images
    assert_complete_without_duplicates(job, 12)


def run_in_threads(bodies) -> list[BaseException]:
    from django.db import connection

    errors = []

    def wrap(body):
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=wrap, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_two_workers_sharing_the_chunks_never_make_the_same_image(dataset, monkeypatch):
    job = queued_job(dataset)
    chunks = list(range(4))  # what the dispatcher enqueues for 12 images in chunks of 3
    lock = threading.Lock()
    workers = [Scripted(delay=0.02), Scripted(delay=0.02)]
    by_thread = {}

    def backend_of_this_thread(*a, **k):
        return by_thread[threading.get_ident()]

    monkeypatch.setattr(jobs, "get_backend", backend_of_this_thread)

    def worker(backend):
        def body():
            by_thread[threading.get_ident()] = backend
            while True:
                with lock:  # the broker hands each chunk message to one consumer
                    if not chunks:
                        return
                    chunk = chunks.pop()
                generation_chunk_execute(job.id, chunk, 3, batch_size=2)
        return body

    assert run_in_threads([worker(w) for w in workers]) == []
    made = workers[0].made + workers[1].made
    assert sum(made.values()) == 12 and all(w.calls for w in workers)  # each image made exactly once
    assert_complete_without_duplicates(job, 12)


def test_a_stale_count_written_after_a_siblings_larger_one_does_not_lower_the_progress(dataset, monkeypatch):
    """Two workers of one job: B counts the images before A's last rows are committed, A
    counts 12 and finishes the job, then B writes its 11. (CI once ended such a run at
    'succeeded, 11 of 12'.) The count B read is stale; the job keeps 12."""
    job = make_job(dataset, name="raced")
    job.refresh_from_db()
    assert (job.status, job.done_images) == ("succeeded", 12)
    real = jobs.generation_job_images
    monkeypatch.setattr(jobs, "generation_job_images", lambda j: real(j).exclude(pk=real(j).first().pk))
    assert jobs._progress(job) is True  # B's progress, from before A's commit
    jobs._job_finish_if_complete(job)  # and B's finish
    job.refresh_from_db()
    assert (job.status, job.done_images, job.total_images) == ("succeeded", 12, 12)


def test_a_new_run_counts_from_what_storage_holds(dataset, monkeypatch):
    """Within a run the count only grows; a run started after images were deleted starts from
    what is there (progress shows the rerun's work), and ends complete."""
    job = make_job(dataset, name="rerun")
    Image.objects.filter(job=job).order_by("pk")[:1].get().delete()
    seen = []
    original = jobs._generate

    def spy(job_, missing, batch_size):
        seen.append(GenerationJob.objects.get(pk=job_.pk).done_images)
        return original(job_, missing, batch_size)

    monkeypatch.setattr(jobs, "_generate", spy)
    generation_job_execute(job.id)
    job.refresh_from_db()
    assert seen == [11] and (job.status, job.done_images) == ("succeeded", 12)


def test_a_redelivered_chunk_running_twice_at_once_adds_no_duplicate(dataset, monkeypatch):
    job = queued_job(dataset)
    monkeypatch.setattr(jobs, "get_backend", lambda *a, **k: Scripted(delay=0.02))
    errors = run_in_threads([lambda c=c: generation_chunk_execute(job.id, c, 6, batch_size=2) for c in (0, 1, 0, 1)])
    assert errors == []
    assert_complete_without_duplicates(job, 12)


def test_a_diffusers_job_stores_images_that_regenerate_exactly(dataset, settings):
    from tests.workers.tiny_diffusion import shared_tiny_folder
    from workers.ml.backends import BackendSpec, GenerationParams, get_backend
    from workers.ml.seeding import image_seed

    backends.cache_clear()
    folder = shared_tiny_folder()
    ckpt = Checkpoint.objects.create(name="tiny", backend="diffusers", location=str(folder), fingerprint="tiny-job",
                                     config={"batch_size": 3})
    job = generation_job_create(checkpoint=ckpt, dataset=dataset, seeds=[4, 5], images_per_seed=2, width=32,
                                height=32, num_inference_steps=2, scheduler="dpm++", dtype="float16")
    assert_complete_without_duplicates(job, 8)
    image = Image.objects.get(job=job, seed=5, index=1, prompt__source_index=1)
    assert image.metadata["dtype"] == "float32"  # float16 asked, float32 on the CPU
    backend = get_backend(BackendSpec("diffusers", location=str(folder), fingerprint="tiny-job"), dtype="float16")
    again = backend.generate([image.prompt.text], [image_seed(5, 1)],
                             GenerationParams(width=32, height=32, num_inference_steps=2, scheduler="dpm++"))
    assert hashlib.sha256(jobs.encode_jpeg(again[0].image)).hexdigest() == image.sha256
    settings.CALIBRA_ALLOWED_INPUT_ROOTS = [str(folder.parent / "elsewhere")]
    other = Checkpoint.objects.create(name="outside", backend="diffusers", location=str(folder))
    with pytest.raises(ValueError, match="outside the allowed input roots"):
        generation_job_create(checkpoint=other, dataset=dataset, seeds=[0], width=32, height=32)
    backends.cache_clear()


def test_image_writer_keeps_a_bounded_number_of_images_in_flight(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(jobs, "_store", lambda *args: (release.wait(5), args)[1])
    submitted = []
    with jobs.ImageWriter(workers=2, max_pending=3) as writer:
        def produce():
            for i in range(5):
                writer.submit(1, i, None)
                submitted.append(i)

        producer = threading.Thread(target=produce)
        producer.start()
        deadline = time.monotonic() + 5
        while len(submitted) < 3 and time.monotonic() < deadline:  # a busy machine may start it late
            time.sleep(0.01)
        time.sleep(0.2)
        assert submitted == [0, 1, 2]  # the fourth waits for room
        release.set()
        producer.join(5)
        assert submitted == [0, 1, 2, 3, 4]
        assert sorted(r[1] for r in writer.finished(wait=True)) == [0, 1, 2, 3, 4]


def test_demo_can_run_the_tiny_diffusers_pipeline_through_the_worker(settings, tmp_path, monkeypatch):
    from django.core.management import call_command

    from annotate.models import RewardScore, Study
    from annotate.services import demo
    from workers import tasks

    settings.DATA_DIR = tmp_path
    # Chunks smaller than the jobs: a fanned-out job would finish after the chain moved on.
    settings.CALIBRA_GENERATION_CHUNK_SIZE = 3
    enqueued = []
    monkeypatch.setattr(tasks.generation_chunk_run, "delay", lambda *args: enqueued.append(args))
    monkeypatch.setattr(demo, "demo_prompts", lambda: ["three cups", "a dog and a vase", "two apples", "one cat"])
    call_command("seed_demo", backend="tiny-diffusers", stdout=io.StringIO())
    ckpt = Checkpoint.objects.get(name="demo-tiny-diffusers")
    assert ckpt.backend == "diffusers" and (tmp_path / "models" / "tiny-sd" / "model_index.json").is_file()
    job = GenerationJob.objects.get(checkpoint=ckpt)
    assert (job.status, job.done_images) == ("succeeded", job.total_images)
    assert Image.objects.filter(checkpoint=ckpt, width=64).count() == job.total_images > 0
    # The chain ran each job whole, then scored every checkpoint's images, then made the studies.
    assert enqueued == []
    assert set(GenerationJob.objects.values_list("status", flat=True)) == {"succeeded"}
    for checkpoint in Checkpoint.objects.all():
        n = Image.objects.filter(checkpoint=checkpoint).count()
        for variant in ("raw", "textnorm"):
            assert RewardScore.objects.filter(image__checkpoint=checkpoint, variant=variant).count() == n > 0
    assert Study.objects.count() == 2
    backends.cache_clear()


def test_a_job_that_fails_before_it_starts_is_failed_not_left_queued(dataset, monkeypatch):
    """Planning it raised (say, a seed out of range): left queued, the requeue sweep would send
    it again every minute, failing each time."""
    from annotate.services.jobs import jobs_requeue_stale
    from workers.tasks import generation_job_run

    job = queued_job(dataset, name="doomed")

    def broken_plan(job):
        raise OverflowError("Python int too large to convert to C long")

    monkeypatch.setattr(jobs, "job_plan", broken_plan)
    with pytest.raises(OverflowError):
        generation_job_run(job.id)
    job.refresh_from_db()
    assert job.status == "failed" and job.error == "OverflowError: Python int too large to convert to C long"
    assert job.finished_at is not None
    assert job.pk not in jobs_requeue_stale(older_than=0).sent["generation"]  # a failed row is not sent again
