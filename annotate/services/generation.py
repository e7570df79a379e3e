from pathlib import Path

from django.db import transaction

from annotate.models import Checkpoint, Dataset, GenerationJob, Image
from annotate.services.checkpoints import checkpoint_fingerprint_ensure
from annotate.services.enqueue import enqueue_after_commit
from annotate.services.paths import PathNotAllowed, input_path_check
from workers.ml.backends import scheduler_check


class GenerationError(ValueError):
    """Bad input for a generation job; the message names the field. Nothing is written."""


@transaction.atomic
def generation_job_create(
    *, checkpoint: Checkpoint, dataset: Dataset, seeds: list[int], images_per_seed: int = 1,
    width: int = 512, height: int = 512, num_inference_steps: int = 25, guidance_scale: float = 7.5,
    scheduler: str = "", dtype: str = GenerationJob.DType.FLOAT16, created_by=None, enqueue: bool = True,
) -> GenerationJob:
    """Create a generation job and enqueue it once the transaction has committed (unless the
    caller enqueues it itself, e.g. in a chain)."""
    if checkpoint.backend == Checkpoint.Backend.BEST_OF_N:
        raise GenerationError(f"checkpoint: {checkpoint.name!r} is a best-of-n selection of another checkpoint's "
                              f"images; it has nothing to generate")
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**63 for s in seeds):
        raise GenerationError(f"seeds: must be a non-empty list of integers from 0 to 2^63 - 1 (the image "
                              f"table's range), not {seeds!r}")
    for field, value, low in (("images_per_seed", images_per_seed, 1), ("width", width, 8), ("height", height, 8),
                              ("num_inference_steps", num_inference_steps, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise GenerationError(f"{field}: must be an integer >= {low}, not {value!r}")
    if dtype not in GenerationJob.DType.values:
        raise GenerationError(f"dtype: must be one of {', '.join(GenerationJob.DType.values)}, not {dtype!r}")
    try:
        scheduler_check(scheduler)  # a typo fails here, not on a GPU worker later
    except ValueError as exc:
        raise GenerationError(f"scheduler: {exc}") from None
    if not dataset.prompts.exists():
        raise GenerationError(f"dataset: {dataset.name!r} has no prompts")
    for field in ("location", "base_model"):
        value = getattr(checkpoint, field)
        if value and checkpoint.backend != Checkpoint.Backend.PROCEDURAL and Path(value).exists():
            try:
                input_path_check(Path(value), what=f"checkpoint {field}")
            except PathNotAllowed as exc:
                raise GenerationError(f"checkpoint: {exc}") from None
    checkpoint_fingerprint_ensure(checkpoint)
    job = GenerationJob.objects.create(
        checkpoint=checkpoint, dataset=dataset, seeds=list(dict.fromkeys(seeds)),
        images_per_seed=images_per_seed, width=width, height=height,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        scheduler=scheduler, dtype=dtype, created_by=created_by,
        total_images=dataset.prompts.count() * len(set(seeds)) * images_per_seed,
    )
    if enqueue:
        from workers.tasks import generation_job_run

        # After commit, so that the worker never looks for a row that is not there yet; a broker
        # that is down leaves the job queued for requeue_jobs (annotate.services.enqueue).
        enqueue_after_commit(generation_job_run, job.id)
    return job


def generation_job_images(job: GenerationJob):
    """The images a generation job stands for: its checkpoint's images of its dataset's
    prompts, seeds and indexes, whichever job made them (a rerun, or another job with the
    same settings, reuses what exists)."""
    return Image.objects.filter(
        checkpoint=job.checkpoint_id, prompt__dataset=job.dataset_id, seed__in=job.seeds,
        index__lt=job.images_per_seed,
    )
