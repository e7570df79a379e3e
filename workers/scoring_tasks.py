"""Celery entry points for reward scoring (routed to the gpu queue by their names). They
take ids (JSON), import heavy code lazily, and are idempotent."""
from celery import shared_task


@shared_task(name="workers.tasks.scoring_job_run", acks_late=True)
def scoring_job_run(job_id: int) -> int:
    from workers.scoring import scoring_job_execute

    return scoring_job_execute(job_id)


@shared_task(name="workers.tasks.scoring_demo_run", acks_late=True)
def scoring_demo_run() -> list[int]:
    from annotate.services.demo import demo_images_score

    return demo_images_score()
