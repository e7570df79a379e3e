"""Celery entry points. They take ids (JSON), import heavy code lazily, and are idempotent."""
from celery import shared_task


@shared_task(name="workers.tasks.generation_job_run", acks_late=True)
def generation_job_run(job_id: int) -> int:
    from workers.jobs import generation_job_execute

    return generation_job_execute(job_id)


@shared_task(name="workers.tasks.demo_studies_create")
def demo_studies_create() -> int:
    from annotate.services.demo import demo_studies_create as create

    return len(create())
