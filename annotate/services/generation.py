from django.db import transaction

from annotate.models import Checkpoint, Dataset, GenerationJob, Image
from workers.ml.backends import scheduler_check


@transaction.atomic
def generation_job_create(
    *, checkpoint: Checkpoint, dataset: Dataset, seeds: list[int], images_per_seed: int = 1,
    width: int = 512, height: int = 512, num_inference_steps: int = 25, guidance_scale: float = 7.5,
    scheduler: str = "", dtype: str = GenerationJob.DType.FLOAT16, created_by=None, enqueue: bool = True,
) -> GenerationJob:
    """Create a generation job and enqueue it once the transaction has committed (unless the
    caller enqueues it itself, e.g. in a chain)."""
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError("seeds must be a non-empty list of non-negative integers")
    scheduler_check(scheduler)  # a typo fails here, not on a GPU worker later
    job = GenerationJob.objects.create(
        checkpoint=checkpoint, dataset=dataset, seeds=list(dict.fromkeys(seeds)),
        images_per_seed=images_per_seed, width=width, height=height,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        scheduler=scheduler, dtype=dtype, created_by=created_by,
        total_images=dataset.prompts.count() * len(set(seeds)) * images_per_seed,
    )
    if enqueue:
        from workers.tasks import generation_job_run

        # After commit, so that the worker never looks for a row that is not there yet.
        transaction.on_commit(lambda: generation_job_run.delay(job.id))
    return job


def generation_job_images(job: GenerationJob):
    """The images a generation job stands for: its checkpoint's images of its dataset's
    prompts, seeds and indexes, whichever job made them (a rerun, or another job with the
    same settings, reuses what exists)."""
    return Image.objects.filter(
        checkpoint=job.checkpoint_id, prompt__dataset=job.dataset_id, seed__in=job.seeds,
        index__lt=job.images_per_seed,
    )
