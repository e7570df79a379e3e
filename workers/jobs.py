"""Generation jobs: the database side of the worker. The ML side is in ``workers.ml``.

A job is idempotent: it computes which of its images are missing and makes only those,
so a rerun or a restart after a crash completes it without duplicates (the database's
unique constraint on checkpoint, prompt, seed and index backs this up).
"""
from __future__ import annotations

import hashlib
import io
import logging

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import Q
from django.utils import timezone

from annotate.models import GenerationJob, Image
from workers.ml.backends import BackendSpec, GenerationParams, get_backend
from workers.ml.seeding import image_seed

log = logging.getLogger(__name__)


def generated_image_name(*, checkpoint_id: int, prompt_id: int, seed: int, index: int) -> str:
    return f"generated/{checkpoint_id}/{prompt_id}_{seed}_{index}.jpg"


def _encode_jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _job_images(job: GenerationJob):
    return Image.objects.filter(
        checkpoint=job.checkpoint_id, prompt__dataset=job.dataset_id, seed__in=job.seeds,
        index__lt=job.images_per_seed,
    )


def generation_job_execute(job_id: int, *, batch_size: int = 8) -> int:
    """Make the job's missing images. Returns how many this call made."""
    job = GenerationJob.objects.select_related("checkpoint").get(pk=job_id)
    if job.status == GenerationJob.Status.CANCELLED:
        return 0
    GenerationJob.objects.filter(pk=job.pk).update(
        status=GenerationJob.Status.RUNNING, started_at=job.started_at or timezone.now(), error=""
    )
    try:
        made = _generate_missing(job, batch_size)
    except Exception as exc:
        GenerationJob.objects.filter(pk=job.pk).update(
            status=GenerationJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        raise
    GenerationJob.objects.filter(pk=job.pk).update(
        status=GenerationJob.Status.SUCCEEDED, done_images=_job_images(job).count(), finished_at=timezone.now()
    )
    return made


def _generate_missing(job: GenerationJob, batch_size: int) -> int:
    checkpoint = job.checkpoint
    prompts = list(job.dataset.prompts.order_by("source_index").values_list("id", "text"))
    done = set(_job_images(job).values_list("prompt_id", "seed", "index"))
    missing = [
        (prompt_id, text, seed, index)
        for prompt_id, text in prompts
        for seed in job.seeds
        for index in range(job.images_per_seed)
        if (prompt_id, seed, index) not in done
    ]
    backend = get_backend(BackendSpec(
        backend=checkpoint.backend, location=checkpoint.location, base_model=checkpoint.base_model,
        config=checkpoint.config, fingerprint=checkpoint.fingerprint,
    ))
    params = GenerationParams(width=job.width, height=job.height,
                              num_inference_steps=job.num_inference_steps, guidance_scale=job.guidance_scale)
    made = 0
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        pictures = backend.generate([b[1] for b in batch], [image_seed(b[2], b[3]) for b in batch], params)
        rows = []
        for (prompt_id, _, seed, index), generated in zip(batch, pictures, strict=True):
            picture = generated.image
            content = _encode_jpeg(picture)
            name = generated_image_name(checkpoint_id=checkpoint.id, prompt_id=prompt_id, seed=seed, index=index)
            # Same name for the same image: a rerun overwrites its own file, never adds one.
            if default_storage.exists(name):
                default_storage.delete(name)
            name = default_storage.save(name, ContentFile(content))
            rows.append(Image(
                prompt_id=prompt_id, checkpoint=checkpoint, job=job, seed=seed, index=index,
                file=name, sha256=hashlib.sha256(content).hexdigest(), size_bytes=len(content),
                width=picture.width, height=picture.height, metadata=generated.metadata,
            ))
        Image.objects.bulk_create(rows, ignore_conflicts=True)
        made += len(rows)
        GenerationJob.objects.filter(pk=job.pk).update(done_images=_job_images(job).count())
    return made
