"""Generation jobs: the database side of the worker. The ML side is in ``workers.ml``.

A job's images are an ordered list (prompt, seed, index); chunk k is the slice
[k * chunk_size, (k + 1) * chunk_size). A small job runs in one task; a large one is fanned
out as one task per chunk with missing images (ids and the chunk index as JSON), so any
number of GPU workers share it and no two of them are given the same image.

Every step is idempotent: a run computes which of its images are missing and makes only
those, so a rerun, a redelivered task or a restart after a crash completes the job without
duplicates (the unique constraint on checkpoint, prompt, seed and index backs this up, and
a redone image overwrites its own file under the same name: a keyed hash of the four, so
the name tells none of them; annotate/media.py).

On the hot loop the worker only generates: JPEG encoding and storage run on a small thread
pool with a bounded number of images in flight, and the rows of each finished batch are
written in one bulk insert with the job's progress.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from annotate.media import image_clean, keyed_image_name
from annotate.models import GenerationJob, Image
from annotate.services.generation import generation_job_images
from annotate.services.paths import input_path_check
from workers.ml.backends import DIFFUSERS_BACKENDS, BackendSpec, GenerationParams, Generated, get_backend
from workers.ml.seeding import image_seed

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
DEFAULT_CHUNK_SIZE = 256


def generation_batch_size(job: GenerationJob) -> int:
    """Prompts per pipeline call: the checkpoint's ``config.batch_size``, else the worker's setting."""
    value = job.checkpoint.config.get("batch_size") or getattr(settings, "CALIBRA_GENERATION_BATCH_SIZE",
                                                               DEFAULT_BATCH_SIZE)
    return max(1, int(value))


def generation_chunk_size() -> int:
    return max(1, int(getattr(settings, "CALIBRA_GENERATION_CHUNK_SIZE", DEFAULT_CHUNK_SIZE)))


def generated_image_name(*, checkpoint_id: int, prompt_id: int, seed: int, index: int) -> str:
    """Every worker names an image alike (they share CALIBRA_MEDIA_NAME_KEY or SECRET_KEY)."""
    return keyed_image_name("generated", checkpoint_id, prompt_id, seed, index)


@dataclass(frozen=True)
class Planned:
    prompt_id: int
    text: str
    seed: int
    index: int


def job_plan(job: GenerationJob) -> list[Planned]:
    """Every image of the job, in a fixed order: the basis of the chunks."""
    prompts = job.dataset.prompts.order_by("source_index", "id").values_list("id", "text")
    return [Planned(pid, text, seed, index)
            for pid, text in prompts for seed in job.seeds for index in range(job.images_per_seed)]


def _missing(job: GenerationJob, planned: list[Planned]) -> list[Planned]:
    done = set(generation_job_images(job).values_list("prompt_id", "seed", "index"))
    return [p for p in planned if (p.prompt_id, p.seed, p.index) not in done]


# ---------------------------------------------------------------- entry points (tasks call these)

def generation_job_dispatch(job_id: int, *, chunk_size: int | None = None, fan_out: bool = True) -> list[int]:
    """Start a job: run it here when its missing images fit one chunk (or ``fan_out`` is false),
    else enqueue one task per chunk that has missing images. Returns the chunk indices
    enqueued (empty when run here)."""
    chunk_size = chunk_size or generation_chunk_size()
    job = GenerationJob.objects.select_related("checkpoint", "dataset").get(pk=job_id)
    if job.status == GenerationJob.Status.CANCELLED:
        return []
    planned = job_plan(job)
    missing = {(p.prompt_id, p.seed, p.index) for p in _missing(job, planned)}
    chunks = sorted({i // chunk_size for i, p in enumerate(planned) if (p.prompt_id, p.seed, p.index) in missing})
    if len(chunks) <= 1 or not fan_out:
        generation_job_execute(job_id)
        return []
    _job_start(job)
    from workers.tasks import generation_chunk_run

    for chunk in chunks:
        generation_chunk_run.delay(job_id, chunk, chunk_size)
    return chunks


def generation_job_execute(job_id: int, *, batch_size: int | None = None) -> int:
    """Make all of the job's missing images here. Returns how many this call made."""
    return _run(job_id, chunk=None, batch_size=batch_size)


def generation_chunk_execute(job_id: int, chunk_index: int, chunk_size: int, *,
                             batch_size: int | None = None) -> int:
    """Make the missing images of one chunk. Returns how many this call made."""
    if chunk_index < 0 or chunk_size < 1:
        raise ValueError(f"chunk_index must be >= 0 and chunk_size >= 1, not {chunk_index}, {chunk_size}")
    return _run(job_id, chunk=(chunk_index, chunk_size), batch_size=batch_size)


# ---------------------------------------------------------------- the run

def _job_start(job: GenerationJob) -> None:
    """A run starts (before any chunk of it is sent): its count is what storage holds now,
    lower than the last run's when images were deleted since."""
    done = min(generation_job_images(job).count(), job.total_images)
    GenerationJob.objects.filter(pk=job.pk).exclude(status=GenerationJob.Status.CANCELLED).update(
        status=GenerationJob.Status.RUNNING, started_at=job.started_at or timezone.now(), error="", done_images=done)


def _done_at_least(done: int) -> Greatest:
    """Workers of one run count the rows and then write the count: a count read before a
    sibling's rows were committed can be written after the sibling's larger one. Within a run
    the count only grows, so the larger of the two is kept."""
    return Greatest(F("done_images"), Value(done))


def _job_finish_if_complete(job: GenerationJob) -> None:
    done = min(generation_job_images(job).count(), job.total_images)
    fields = {"done_images": _done_at_least(done)}
    if done >= job.total_images:
        fields.update(status=GenerationJob.Status.SUCCEEDED, finished_at=timezone.now(), error="")
    GenerationJob.objects.filter(pk=job.pk).exclude(status=GenerationJob.Status.CANCELLED).update(**fields)


def _run(job_id: int, *, chunk: tuple[int, int] | None, batch_size: int | None) -> int:
    job = GenerationJob.objects.select_related("checkpoint", "dataset").get(pk=job_id)
    if job.status == GenerationJob.Status.CANCELLED:
        return 0
    if chunk is None:
        _job_start(job)
    else:  # the dispatcher started the job; a chunk keeps a sibling's recorded failure
        GenerationJob.objects.filter(pk=job.pk, status=GenerationJob.Status.QUEUED).update(
            status=GenerationJob.Status.RUNNING, started_at=timezone.now())
    try:
        planned = job_plan(job)
        if chunk is not None:
            index, size = chunk
            planned = planned[index * size:(index + 1) * size]
        made = _generate(job, _missing(job, planned), batch_size or generation_batch_size(job))
    except Exception as exc:
        GenerationJob.objects.filter(pk=job.pk).update(
            status=GenerationJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        raise
    _job_finish_if_complete(job)
    return made


def backend_spec(checkpoint) -> BackendSpec:
    """The checkpoint as the ML side sees it, with its paths checked against the allowed roots."""
    if checkpoint.backend in DIFFUSERS_BACKENDS:
        input_path_check(checkpoint.location, what="checkpoint location")
        if checkpoint.base_model:
            input_path_check(checkpoint.base_model, what="checkpoint base_model")
    return BackendSpec(backend=checkpoint.backend, location=checkpoint.location, base_model=checkpoint.base_model,
                       config=checkpoint.config, fingerprint=checkpoint.fingerprint)


def _generate(job: GenerationJob, missing: list[Planned], batch_size: int) -> int:
    if not missing:
        return 0
    checkpoint = job.checkpoint
    backend = get_backend(backend_spec(checkpoint), dtype=job.dtype,
                          compile_unet=getattr(settings, "CALIBRA_GENERATION_COMPILE", None))
    params = GenerationParams(width=job.width, height=job.height, num_inference_steps=job.num_inference_steps,
                              guidance_scale=job.guidance_scale, scheduler=job.scheduler)
    seconds = backend.warm_up(params, min(batch_size, len(missing)))
    if seconds:
        log.info("job %s: compiled checkpoint %s in %.1f s (once per worker process)", job.pk, checkpoint.pk, seconds)
    made = 0
    with ImageWriter(workers=int(getattr(settings, "CALIBRA_ENCODE_THREADS", 2)),
                     max_pending=2 * batch_size) as writer:
        try:
            for start in range(0, len(missing), batch_size):
                batch = missing[start:start + batch_size]
                pictures = backend.generate([p.text for p in batch], [image_seed(p.seed, p.index) for p in batch],
                                            params)
                # The previous batch was encoded and stored while this one was generated.
                made += _write_rows(job, writer.finished(wait=True))
                if not _progress(job):
                    log.info("job %s was cancelled; stopping", job.pk)
                    break
                for planned, generated in zip(batch, pictures, strict=True):
                    writer.submit(checkpoint.id, planned, generated)
        finally:
            # Also when generation fails: the images already made are kept, so a rerun skips them.
            made += _write_rows(job, writer.finished(wait=True))
            _progress(job)
    return made


def _progress(job: GenerationJob) -> bool:
    """Record done/total; False when the job has been cancelled meanwhile."""
    done = min(generation_job_images(job).count(), job.total_images)
    return bool(GenerationJob.objects.filter(pk=job.pk).exclude(status=GenerationJob.Status.CANCELLED)
                .update(done_images=_done_at_least(done)))


def _write_rows(job: GenerationJob, stored: list[tuple[Planned, Generated, str, str, int]]) -> int:
    if not stored:
        return 0
    rows = [Image(prompt_id=p.prompt_id, checkpoint_id=job.checkpoint_id, job=job, seed=p.seed, index=p.index,
                  file=name, sha256=sha, size_bytes=size, width=g.image.width, height=g.image.height,
                  metadata=g.metadata)
            for p, g, name, sha, size in stored]
    # A concurrent run of the same image (a redelivered task) loses quietly to the first row.
    Image.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def encode_jpeg(image) -> bytes:
    """A generated image as stored: its pixels alone, whatever the backend put in ``info``."""
    return image_clean(image, keep_png=False).content


def _store(checkpoint_id: int, planned: Planned, generated: Generated):
    content = encode_jpeg(generated.image)
    name = generated_image_name(checkpoint_id=checkpoint_id, prompt_id=planned.prompt_id, seed=planned.seed,
                                index=planned.index)
    # Same name for the same image: a rerun overwrites its own file, never adds one. A chunk
    # redelivered while its first run still goes writes the same bytes under the same name;
    # the file-system race between the two (one deleting what the other just made) is retried.
    for attempt in range(3):
        try:
            if default_storage.exists(name):
                default_storage.delete(name)
            stored = default_storage.save(name, ContentFile(content))
            break
        except (FileNotFoundError, FileExistsError):
            if attempt == 2:
                raise
    return planned, generated, stored, hashlib.sha256(content).hexdigest(), len(content)


class ImageWriter:
    """Encodes and stores images on a thread pool while the caller generates the next batch.

    At most ``max_pending`` images are in flight (``submit`` waits for room), so memory stays
    bounded however far generation runs ahead. Rows are returned to the caller's thread, which
    owns the database connection. An error in a pool thread is raised by ``finished``.
    """

    def __init__(self, *, workers: int = 2, max_pending: int = 32):
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="encode")
        self._room = threading.BoundedSemaphore(max(1, max_pending))
        self._futures: list[Future] = []

    def submit(self, checkpoint_id: int, planned: Planned, generated: Generated) -> None:
        self._room.acquire()
        future = self._pool.submit(_store, checkpoint_id, planned, generated)
        future.add_done_callback(lambda _: self._room.release())
        self._futures.append(future)

    def finished(self, *, wait: bool = False) -> list:
        ready = [f for f in self._futures if wait or f.done()]
        self._futures = [f for f in self._futures if f not in ready]
        return [f.result() for f in ready]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)
        return False
