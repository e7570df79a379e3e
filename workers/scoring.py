"""Scoring jobs: the database side of reward scoring. The ML side is in ``workers.ml``.

A job scores every image (with a file) of its generation job, checkpoint or dataset with
one reward model: raw (the score of the original prompt) and/or TextNorm over each
prompt's contrastive set. Each image is decoded once (in a background thread, so the
device does not wait for storage), encoded once, and scored against its whole prompt set
in the same batch; each text is encoded once per worker process. Idempotent: only images
that lack one of the requested rows are scored, and the database's unique constraints
make a concurrent duplicate a no-op.
"""
from __future__ import annotations

import io
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from collections import defaultdict
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


def _textnorm_filter(job: ScoringJob) -> Q:
    return Q(variant=TEXTNORM, normalize=job.normalize, scale=job.scale, temperature=job.temperature)


def _missing(job: ScoringJob, sets: dict[int, ContrastivePromptSet]) -> tuple[list[_Todo], int]:
    """What is left to score, and how many images of the job are complete."""
    rows = list(scoring_job_images(job).order_by("prompt_id", "id").values_list("id", "file", "prompt_id"))
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
    todo = [_Todo(i, f, p, want_raw and i not in has_raw, want_tn and i not in has_tn) for i, f, p in rows]
    todo = [t for t in todo if t.raw or t.textnorm]
    return todo, len(rows) - len(todo)


def _decode(name: str) -> np.ndarray:
    from PIL import Image as PILImage

    try:
        with default_storage.open(name, "rb") as fh:
            data = fh.read()
        with PILImage.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # storage and Pillow raise many types
        raise ScoringError(f"image file {name}: cannot read: {exc}") from exc


_DONE = object()


def _decoders() -> int:
    """Decoding threads: one per core (Pillow releases the GIL while it decodes), at least 4:
    JPEG decoding on the CPU, not the model, bounds a GPU worker's scoring rate."""
    return max(4, min(32, os.cpu_count() or 4))


def _prefetch(todo: list[_Todo], batch_size: int, depth: int = 3, decoders: int | None = None):
    """Decoded batches from a background thread, ``depth`` batches ahead of the device."""
    decoders = decoders or _decoders()
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="scoring-decode")

    def work():
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                item = (batch, list(pool.map(_decode, [t.file for t in batch])))
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(exc)
            return
        out.put(_DONE)

    thread = threading.Thread(target=work, name="scoring-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
        pool.shutdown(wait=False, cancel_futures=True)


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
    for batch, pixels in _prefetch(todo, job.batch_size):
        rows = score_batch(scorer, job, batch, pixels, prompt_texts, sets)
        scored += len(batch)
        with transaction.atomic():
            RewardScore.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)
            ScoringJob.objects.filter(pk=job.pk).update(done_images=done + scored)
    log.info("scoring job %s: scored %s images", job.pk, scored)
    return scored
