"""Scoring jobs: the database side of reward scoring. The ML side is in ``workers.ml``.

A job scores every image (with a file) of its generation job, checkpoint or dataset with
one reward model: raw (the score of the original prompt) and/or TextNorm over each
prompt's contrastive set. Each image is decoded once (by a pool of threads, batches ahead
of the device, into one buffer per batch), encoded once, and scored against its whole
prompt set in the same batch; each text is encoded once per worker process. One batch is
in flight on the device while the host turns the previous one's scores into rows, and a
thread of its own writes them (in one transaction, whatever has queued up). ``Stages``
says where a job's time went. Idempotent: only images
that lack one of the requested rows are scored, and the database's unique constraints
make a concurrent duplicate a no-op.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import queue
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotate.models import ContrastivePromptSet, Prompt, RewardModel, RewardScore, ScoringJob
from annotate.services.scoring import ScoringError, prompt_sets_select, scoring_job_images
from workers.ml.rewards import RewardSpec, load_reward_model
from workers.ml.textnorm import textnorm

log = logging.getLogger(__name__)
RAW, TEXTNORM = RewardScore.Variant.RAW, RewardScore.Variant.TEXTNORM


def reward_spec(model: RewardModel) -> RewardSpec:
    return RewardSpec(kind=model.kind, location=model.location, config=model.config or {},
                      fingerprint=model.fingerprint)


@dataclass
class _Todo:
    image_id: int
    file: str
    prompt_id: int
    raw: bool
    textnorm: bool
    size: tuple[int | None, int | None] = (None, None)  # (height, width) as recorded


def _textnorm_filter(job: ScoringJob) -> Q:
    return Q(variant=TEXTNORM, normalize=job.normalize, scale=job.scale, temperature=job.temperature)


def _missing(job: ScoringJob, sets: dict[int, ContrastivePromptSet]) -> tuple[list[_Todo], int]:
    """What is left to score, and how many images of the job are complete."""
    rows = list(scoring_job_images(job).order_by("prompt_id", "id")
                .values_list("id", "file", "prompt_id", "height", "width"))
    ids = [r[0] for r in rows]
    want_raw, want_tn = RAW in job.variants, TEXTNORM in job.variants
    scores = RewardScore.objects.filter(reward_model=job.reward_model_id, image_id__in=ids)
    has_raw = set(scores.filter(variant=RAW).values_list("image_id", flat=True)) if want_raw else set()
    has_tn = set()
    if want_tn:
        has_tn = {
            image_id for image_id, prompt_id, set_id in scores.filter(_textnorm_filter(job))
            .values_list("image_id", "image__prompt_id", "prompt_set_id")
            if sets[prompt_id].id == set_id
        }
    todo = [_Todo(i, f, p, want_raw and i not in has_raw, want_tn and i not in has_tn, (h, w))
            for i, f, p, h, w in rows]
    todo = [t for t in todo if t.raw or t.textnorm]
    return todo, len(rows) - len(todo)


def _read_bytes():
    """name -> the file's bytes: straight from the disk for a local storage (the storage's own
    ``path()`` still refuses a name outside its folder), else through the storage API."""
    try:
        default_storage.path("probe")
    except NotImplementedError:
        def read(name: str) -> bytes:
            with default_storage.open(name, "rb") as fh:
                return fh.read()
        return read

    def read_local(name: str) -> bytes:
        with open(default_storage.path(name), "rb") as fh:
            return fh.read()
    return read_local


def _decode(name: str, into: np.ndarray | None = None, read=None) -> np.ndarray | None:
    """The image as an HxWx3 uint8 array, or written into ``into`` (a slot of a batch buffer)
    when it has that shape (then None)."""
    from PIL import Image as PILImage

    try:
        data = (read or _read_bytes())(name)
        with PILImage.open(io.BytesIO(data)) as img:
            array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except Exception as exc:  # storage and Pillow raise many types
        raise ScoringError(f"image file {name}: cannot read: {exc}") from exc
    if into is not None and array.shape == into.shape:
        np.copyto(into, array)
        return None
    return array


def _decode_chunk(names: list[str], slots: list, read) -> list[np.ndarray | None]:
    return [_decode(name, slot, read) for name, slot in zip(names, slots, strict=True)]


_DONE = object()


def _decoders() -> int:
    """Decoding threads: one per core (Pillow releases the GIL while it decodes), at least 4:
    JPEG decoding on the CPU, not the model, bounds a GPU worker's scoring rate."""
    return max(4, min(32, os.cpu_count() or 4))


def _batch_buffer(batch: list[_Todo], pin: bool):
    """One (N, H, W, 3) uint8 tensor for a batch whose recorded sizes agree (page-locked for a
    GPU), that the decoding threads fill in place: no copy of the whole batch afterwards."""
    sizes = {t.size for t in batch}
    if len(sizes) != 1 or None in next(iter(sizes)):
        return None
    import torch

    (height, width), = sizes
    return torch.empty((len(batch), height, width, 3), dtype=torch.uint8, pin_memory=pin)


def _prefetch(todo: list[_Todo], batch_size: int, depth: int = 3, decoders: int | None = None,
              pin: bool = False):
    """Decoded batches, ``depth`` batches ahead of the device: the decoding threads work on
    the next batches while the device scores this one. A batch comes as one uint8 tensor
    when its images share a size (each thread decodes into its slot), else as arrays."""
    threads = decoders or _decoders()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scoring-decode")
    pending: deque = deque()
    batches = (todo[start:start + batch_size] for start in range(0, len(todo), batch_size))
    read = _read_bytes()

    def submit(batch):
        buffer = _batch_buffer(batch, pin)
        slots = list(buffer.numpy()) if buffer is not None else [None] * len(batch)
        # A few images per task, a task per thread or so: fewer futures to hand around.
        step = max(1, min(8, -(-len(batch) // threads)))
        futures = [pool.submit(_decode_chunk, [t.file for t in batch[i:i + step]], slots[i:i + step], read)
                   for i in range(0, len(batch), step)]
        pending.append((batch, buffer, futures))

    try:
        for batch in itertools.islice(batches, depth):
            submit(batch)
        while pending:
            batch, buffer, futures = pending.popleft()
            arrays = [a for f in futures for a in f.result()]
            if (following := next(batches, None)) is not None:
                submit(following)
            if buffer is not None and all(a is None for a in arrays):
                yield batch, buffer
            else:  # a file of another size than recorded: as arrays
                slots = buffer.numpy() if buffer is not None else None
                yield batch, [a if a is not None else slots[i] for i, a in enumerate(arrays)]
    finally:
        for _, _, futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _prompt_sets(job: ScoringJob, batch: list[_Todo], prompt_texts: dict[int, str],
                 sets: dict[int, ContrastivePromptSet]) -> list:
    if any(t.textnorm for t in batch):
        return [sets[t.prompt_id].prompt_set for t in batch]
    return [[prompt_texts[t.prompt_id]] for t in batch]


# The columns a row tuple fills, in order (raw SQL: no model instances on the hot path).
ROW_FIELDS = ("image", "reward_model", "variant", "prompt_set", "normalize", "scale", "temperature", "value",
              "created_at")


def score_rows(job: ScoringJob, batch: list[_Todo], logits: list[np.ndarray],
               sets: dict[int, ContrastivePromptSet], created_at) -> list[tuple]:
    """RewardScore rows (tuples in ``ROW_FIELDS`` order) for one batch's scores: raw is
    column 0, TextNorm a function of each image's whole row (images with as many prompts are
    normalised together)."""
    model_id = job.reward_model_id
    rows = [(t.image_id, model_id, RAW, None, "", 1.0, 1.0, float(row[0]), created_at)
            for t, row in zip(batch, logits, strict=True) if t.raw]
    by_width: dict[int, list[int]] = defaultdict(list)
    for k, t in enumerate(batch):
        if t.textnorm:
            by_width[len(logits[k])].append(k)
    for members in by_width.values():
        values = textnorm(np.stack([logits[k] for k in members]), normalize=job.normalize,
                          scale=job.scale, temperature=job.temperature)
        rows.extend(
            (batch[k].image_id, model_id, TEXTNORM, sets[batch[k].prompt_id].id, job.normalize, job.scale,
             job.temperature, value, created_at)
            for k, value in zip(members, values.tolist(), strict=True)
        )
    return rows


def _now():
    from django.db import connection

    return connection.ops.adapt_datetimefield_value(timezone.now())


class Stages:
    """Where a scoring job's time went, in seconds: the main thread waiting for decoded images
    (``decode_wait``), queueing a batch on the device (``device_queue``), waiting for its
    scores (``device_wait``), building rows (``rows``) and handing them to a full writer
    (``write_wait``); the writer thread's own time (``writer``). The stage that dominates
    is the bound: decode_wait the host's decoding, device_wait the model (on the CPU the
    model's time is in device_queue: there the work is done when it is queued), write_wait
    the database."""

    names = ("decode_wait", "device_queue", "device_wait", "rows", "write_wait", "writer")

    def __init__(self):
        self.seconds = dict.fromkeys(self.names, 0.0)
        self.images = 0
        self.wall = 0.0

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def iterate(self, iterable, name: str):
        iterator = iter(iterable)
        while True:
            with self.timed(name):
                item = next(iterator, _DONE)
            if item is _DONE:
                return
            yield item

    def as_dict(self) -> dict:
        out = {name: round(value, 3) for name, value in self.seconds.items()}
        return out | {"images": self.images, "seconds": round(self.wall, 3),
                      "images_per_s": round(self.images / self.wall, 1) if self.wall else None}

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {value:.2f} s" for name, value in self.seconds.items())
        return f"{self.images} images in {self.wall:.2f} s ({parts})"


class JobCancelled(Exception):
    """The job was cancelled while it ran: the rows written so far stay."""


def scoring_job_execute(job_id: int, *, stages: Stages | None = None) -> int:
    """Score the job's missing images. Returns how many images this call scored; ``stages``,
    when given, gets where the time went. A job cancelled meanwhile stops at its next batch."""
    job = ScoringJob.objects.select_related("reward_model").get(pk=job_id)
    if job.status == ScoringJob.Status.CANCELLED:
        return 0
    ScoringJob.objects.filter(pk=job.pk).update(
        status=ScoringJob.Status.RUNNING, started_at=job.started_at or timezone.now(), error="", finished_at=None,
    )
    try:
        scored = _score_missing(job, stages or Stages())
    except JobCancelled:
        log.info("scoring job %s: cancelled", job.pk)
        return 0
    except Exception as exc:
        ScoringJob.objects.filter(pk=job.pk).exclude(status=ScoringJob.Status.CANCELLED).update(
            status=ScoringJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        raise
    ScoringJob.objects.filter(pk=job.pk).exclude(status=ScoringJob.Status.CANCELLED).update(
        status=ScoringJob.Status.SUCCEEDED, finished_at=timezone.now())
    return scored


def _score_missing(job: ScoringJob, stages: Stages) -> int:
    prompt_ids = list(scoring_job_images(job).values_list("prompt_id", flat=True).distinct())
    sets = {}
    if TEXTNORM in job.variants:
        sets = prompt_sets_select(prompt_ids=prompt_ids, source=job.prompt_set_source,
                                  version=job.prompt_set_version)
    todo, done = _missing(job, sets)
    total = done + len(todo)
    ScoringJob.objects.filter(pk=job.pk).update(total_images=total, done_images=done)
    if not todo:
        return 0
    scorer = load_reward_model(reward_spec(job.reward_model))
    prompt_texts = dict(Prompt.objects.filter(id__in={t.prompt_id for t in todo}).values_list("id", "text"))
    scored = 0
    started = time.perf_counter()
    with _RowWriter(job.pk, stages) as writer:

        def finish(batch: list[_Todo], pending) -> None:
            nonlocal scored
            with stages.timed("device_wait"):
                logits = pending.result()
            with stages.timed("rows"):
                rows = score_rows(job, batch, logits, sets, _now())
            scored += len(batch)
            with stages.timed("write_wait"):
                writer.write(rows, done + scored)

        # One batch in flight: the device scores batch i+1 while the host writes batch i's rows.
        in_flight = None
        pin = str(getattr(scorer, "device", "cpu")).startswith("cuda")
        for batch, pixels in stages.iterate(_prefetch(todo, job.batch_size, pin=pin), "decode_wait"):
            with stages.timed("device_queue"):
                pending = _start(scorer, pixels, _prompt_sets(job, batch, prompt_texts, sets))
            if in_flight is not None:
                finish(*in_flight)
            in_flight = (batch, pending)
        if in_flight is not None:
            finish(*in_flight)
    stages.images += scored
    stages.wall += time.perf_counter() - started
    log.info("scoring job %s: %s", job.pk, stages)
    return scored


def _start(scorer, pixels, prompt_sets):
    """The batch queued on the device; scorers without a ``prompt_logits_start`` score now."""
    if hasattr(scorer, "prompt_logits_start"):
        return scorer.prompt_logits_start(pixels, prompt_sets)
    from workers.ml.rewards import PendingLogits

    return PendingLogits.ready(scorer.prompt_logits(pixels, prompt_sets))


def _insert_sql(connection) -> str:
    meta = RewardScore._meta
    columns = ", ".join(connection.ops.quote_name(meta.get_field(name).column) for name in ROW_FIELDS)
    marks = ", ".join(["%s"] * len(ROW_FIELDS))
    # Without a conflict target: a row that any unique constraint already holds is skipped
    # (a redelivered batch, or another worker's), and any other violation still raises.
    return (f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) VALUES ({marks}) "
            f"ON CONFLICT DO NOTHING")


def _write(job_id: int, rows: list[tuple], done: int) -> None:
    from django.db import connection

    with transaction.atomic():
        if rows:
            with connection.cursor() as cursor:
                cursor.executemany(_insert_sql(connection), rows)
        if not ScoringJob.objects.filter(pk=job_id).exclude(status=ScoringJob.Status.CANCELLED).update(
                done_images=done):
            raise JobCancelled(f"scoring job {job_id} was cancelled")


class _RowWriter:
    """Writes the rows and the job's progress on a thread of its own (with its own database
    connection), so the device scores the next batch meanwhile. Batches are written in
    order; whatever has queued up while a write ran goes in the next transaction together
    (one commit for several batches when the database is the slow side). An error is
    raised in the caller's thread, at the next batch or at the end. Inside a transaction
    (tests), rows are written inline: another connection could not see the transaction's
    rows."""

    def __init__(self, job_id: int, stages: Stages | None = None):
        self.job_id = job_id
        self.stages = stages or Stages()
        self.inline = transaction.get_connection().in_atomic_block
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.thread = None if self.inline else threading.Thread(target=self._run, name="scoring-writer", daemon=True)

    def __enter__(self):
        if self.thread is not None:
            self.thread.start()
        return self

    def _take(self) -> tuple[list, bool]:
        """The next batch and every one queued behind it; whether the end mark came."""
        items = [self.queue.get()]
        while items[-1] is not _DONE:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if items[-1] is _DONE:
            return items[:-1], True
        return items, False

    def _run(self) -> None:
        from django.db import connection

        try:
            end = False
            while not end:
                items, end = self._take()
                if items and self.error is None:
                    try:
                        with self.stages.timed("writer"):
                            _write(self.job_id, [row for rows, _ in items for row in rows], items[-1][1])
                    except BaseException as exc:  # raised in the caller's thread
                        self.error = exc
        finally:
            connection.close()

    def write(self, rows: list[tuple], done: int) -> None:
        if self.error is not None:
            raise self.error
        if self.inline:
            with self.stages.timed("writer"):
                _write(self.job_id, rows, done)
        else:
            self.queue.put((rows, done))

    def __exit__(self, *exc_info) -> None:
        if self.thread is not None:
            self.queue.put(_DONE)
            self.thread.join()
        if self.error is not None and exc_info[0] is None:
            raise self.error
