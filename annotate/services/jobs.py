"""What generation and scoring jobs share: retrying a failed job, and cancelling one."""
from __future__ import annotations

from django.db import transaction

from annotate.models import GenerationJob, ScoringJob, WorkerJob


class JobError(ValueError):
    """A job action that does not apply to the job as it stands; the message says why."""


def _task_for(job: WorkerJob):
    if isinstance(job, GenerationJob):
        from workers.tasks import generation_job_run

        return generation_job_run
    from workers.scoring_tasks import scoring_job_run

    return scoring_job_run


@transaction.atomic
def job_retry(job: GenerationJob | ScoringJob) -> GenerationJob | ScoringJob:
    """Queue a failed or cancelled job again. The worker makes (or scores) only what is still
    missing, so a retry never repeats finished work."""
    model = type(job)
    retryable = (WorkerJob.Status.FAILED, WorkerJob.Status.CANCELLED)
    updated = model.objects.filter(pk=job.pk, status__in=retryable).update(
        status=WorkerJob.Status.QUEUED, error="", finished_at=None)
    if not updated:
        job.refresh_from_db()
        raise JobError(f"status: only a failed or cancelled job can be retried; job {job.pk} is {job.status}")
    task = _task_for(job)
    transaction.on_commit(lambda: task.delay(job.pk))
    job.refresh_from_db()
    return job


@transaction.atomic
def job_requeue_succeeded(job: GenerationJob | ScoringJob) -> bool:
    """Queue a succeeded job again (new prompts or images since it ran: it does only what is
    missing). False when it is no longer succeeded."""
    model = type(job)
    if not model.objects.filter(pk=job.pk, status=WorkerJob.Status.SUCCEEDED).update(
            status=WorkerJob.Status.QUEUED, error="", finished_at=None):
        return False
    task = _task_for(job)
    transaction.on_commit(lambda: task.delay(job.pk))
    return True


@transaction.atomic
def job_cancel(job: GenerationJob | ScoringJob) -> GenerationJob | ScoringJob:
    """Stop a queued or running job: workers check the status between batches and chunks."""
    model = type(job)
    updated = model.objects.filter(pk=job.pk, status__in=(WorkerJob.Status.QUEUED, WorkerJob.Status.RUNNING)).update(
        status=WorkerJob.Status.CANCELLED)
    if not updated:
        job.refresh_from_db()
        raise JobError(f"status: only a queued or running job can be cancelled; job {job.pk} is {job.status}")
    job.refresh_from_db()
    return job
