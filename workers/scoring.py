"""Scoring jobs: the database side of reward scoring. The ML side is in ``workers.ml``.

A job scores every image (with a file) of its generation job, checkpoint or dataset with
one reward model: raw (the score of the original prompt) and/or TextNorm over each
prompt's contrastive set. Each image is decoded once (by a pool of threads, batches ahead
of the device, into one buffer per batch), encoded once, and scored against its whole
prompt set in the same batch; each text is encoded once per worker process. Rows are
written by a thread of their own while the device scores the next batch. Idempotent: only images
that lack one of the requested rows are scored, and the database's unique constraints
make a concurrent duplicate a no-op.
"""
from __future__ import annotations

import io
import itertools
import logging
import os
import queue
import threading
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


def _decode(name: str, into: np.ndarray | None = None) -> np.ndarray | None:
    """The image as an HxWx3 uint8 array, or written into ``into`` (a slot of a batch buffer)
    when it has that shape (then None)."""
    from PIL import Image as PILImage

    try:
        with default_storage.open(name, "rb") as fh:
            data = fh.read()
        with PILImage.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"))
    except Exception as exc:  # storage and Pillow raise many types
        raise ScoringError(f"image file {name}: cannot read: {exc}") from exc
    if into is not None and array.shape == into.shape:
        np.copyto(into, array)
        return None
    return array


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
    pool = ThreadPoolExecutor(max_workers=decoders or _decoders(), thread_name_prefix="scoring-decode")
    pending: deque = deque()
    batches = (todo[start:start + batch_size] for start in range(0, len(todo), batch_size))

    def submit(batch):
        buffer = _batch_buffer(batch, pin)
        slots = buffer.numpy() if buffer is not None else [None] * len(batch)
        pending.append((batch, buffer, [pool.submit(_decode, t.file, slots[i]) for i, t in enumerate(batch)]))

    try:
        for batch in itertools.islice(batches, depth):
            submit(batch)
        while pending:
            batch, buffer, futures = pending.popleft()
            arrays = [f.result() for f in futures]
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


def score_batch(scorer, job: ScoringJob, batch: list[_Todo], pixels: list[np.ndarray], prompt_texts: dict[int, str],
                sets: dict[int, ContrastivePromptSet]) -> list[RewardScore]:
    """RewardScore rows for one batch: one model pass gives raw and TextNorm."""
    want_tn = any(t.textnorm for t in batch)
    prompt_sets = [sets[t.prompt_id].prompt_set if want_tn else [prompt_texts[t.prompt_id]] for t in batch]
    logits = scorer.prompt_logits(pixels, prompt_sets)
    rows: list[RewardScore] = []
    by_prompt: dict[int, list[int]] = defaultdict(list)
    for k, t in enumerate(batch):
        if t.raw:
            rows.append(RewardScore(image_id=t.image_id, reward_model_id=job.reward_model_id, variant=RAW,
                                    value=float(logits[k][0])))
        if t.textnorm:
            by_prompt[t.prompt_id].append(k)
    for prompt_id, members in by_prompt.items():
        values = textnorm(np.stack([logits[k] for k in members]), normalize=job.normalize,
                          scale=job.scale, temperature=job.temperature)
        for k, value in zip(members, values, strict=True):
            rows.append(RewardScore(
                image_id=batch[k].image_id, reward_model_id=job.reward_model_id, variant=TEXTNORM,
                prompt_set_id=sets[prompt_id].id, normalize=job.normalize, scale=job.scale,
                temperature=job.temperature, value=float(value),
            ))
    return rows


def scoring_job_execute(job_id: int) -> int:
    """Score the job's missing images. Returns how many images this call scored."""
    job = ScoringJob.objects.select_related("reward_model").get(pk=job_id)
    if job.status == ScoringJob.Status.CANCELLED:
        return 0
    ScoringJob.objects.filter(pk=job.pk).update(
        status=ScoringJob.Status.RUNNING, started_at=job.started_at or timezone.now(), error="", finished_at=None,
    )
    try:
        scored = _score_missing(job)
    except Exception as exc:
        ScoringJob.objects.filter(pk=job.pk).update(
            status=ScoringJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        raise
    ScoringJob.objects.filter(pk=job.pk).update(status=ScoringJob.Status.SUCCEEDED, finished_at=timezone.now())
    return scored


def _score_missing(job: ScoringJob) -> int:
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
    with _RowWriter(job.pk) as writer:
        pin = str(getattr(scorer, "device", "cpu")).startswith("cuda")
        for batch, pixels in _prefetch(todo, job.batch_size, pin=pin):
            rows = score_batch(scorer, job, batch, pixels, prompt_texts, sets)
            scored += len(batch)
            writer.write(rows, done + scored)
    log.info("scoring job %s: scored %s images", job.pk, scored)
    return scored


def _write(job_id: int, rows: list[RewardScore], done: int) -> None:
    with transaction.atomic():
        RewardScore.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)
        ScoringJob.objects.filter(pk=job_id).update(done_images=done)


class _RowWriter:
    """Writes each batch's rows and the job's progress on a thread of its own (with its own
    database connection), so the device scores the next batch meanwhile. Batches are written
    in order; an error is raised in the caller's thread, at the next batch or at the end.
    Inside a transaction (tests), rows are written inline: another connection could not see
    the transaction's rows."""

    def __init__(self, job_id: int):
        self.job_id = job_id
        self.inline = transaction.get_connection().in_atomic_block
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = None if self.inline else threading.Thread(target=self._run, name="scoring-writer", daemon=True)

    def __enter__(self):
        if self.thread is not None:
            self.thread.start()
        return self

    def _run(self) -> None:
        from django.db import connection

        try:
            while (item := self.queue.get()) is not _DONE:
                if self.error is None:
                    try:
                        _write(self.job_id, *item)
                    except BaseException as exc:  # raised in the caller's thread
                        self.error = exc
        finally:
            connection.close()

    def write(self, rows: list[RewardScore], done: int) -> None:
        if self.error is not None:
            raise self.error
        if self.inline:
            _write(self.job_id, rows, done)
        else:
            self.queue.put((rows, done))

    def __exit__(self, *exc_info) -> None:
        if self.thread is not None:
            self.queue.put(_DONE)
            self.thread.join()
        if self.error is not None and exc_info[0] is None:
            raise self.error
