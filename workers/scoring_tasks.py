"""Celery entry points for reward scoring (routed to the gpu queue by their names). They
take ids (JSON), import heavy code lazily, and are idempotent."""
from celery import shared_task


@shared_task(name="workers.tasks.scoring_job_run", acks_late=True)
def scoring_job_run(job_id: int) -> int:
    from annotate.models import ScoringJob
    from workers.scoring import scoring_job_execute
    from workers.tasks import finished, through_database_restarts

    def run():
        if finished(ScoringJob, job_id):  # a repeated message (requeue_jobs, a redelivery)
            return 0
        return scoring_job_execute(job_id)

    return through_database_restarts(f"scoring job {job_id}", run)


@shared_task(name="workers.tasks.scoring_demo_run", acks_late=True)
def scoring_demo_run() -> list[int]:
    from annotate.services.demo import demo_images_score

    return demo_images_score()
