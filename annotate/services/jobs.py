"""What generation and scoring jobs share: retrying a failed job, cancelling one, and sending
again the jobs (and reports) whose broker message was lost or never sent."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import GenerationJob, Report, ScoringJob, WorkerJob
from annotate.services.enqueue import BROKER_ERRORS, enqueue, enqueue_after_commit, queue_waiting

log = logging.getLogger(__name__)


class JobError(ValueError):
    """A job action that does not apply to the job as it stands; the message says why."""


def _task_for(model: type[WorkerJob] | type[Report]):
    """The task that runs a row of ``model`` (its id the one argument)."""
    if model is GenerationJob:
        from workers.tasks import generation_job_run

        return generation_job_run
    if model is Report:
        from workers.tasks import report_build

        return report_build
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
    enqueue_after_commit(_task_for(model), job.pk)
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
    enqueue_after_commit(_task_for(model), job.pk)
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


# A queued row whose message went missing: never sent (the broker was down), or lost with a
# broker that restarted without persistence. Sent again after this long, when its queue
# holds no message that could be its own (the row's task sets it running as it starts).
REQUEUE_AFTER_S = 120.0
REQUEUE_KINDS = {"generation": GenerationJob, "scoring": ScoringJob, "report": Report}


@dataclass
class Requeued:
    sent: dict[str, list[int]] = field(default_factory=lambda: {kind: [] for kind in REQUEUE_KINDS})
    waiting: dict[str, int] = field(default_factory=dict)  # kind -> messages in its queue (not sent)
    broker_error: str = ""  # why it stopped early: the broker could not be reached


def jobs_requeue_stale(*, older_than: float | None = None, include_running: bool = False, force: bool = False,
                       now: datetime | None = None) -> Requeued:
    """Send again the generation jobs, scoring jobs and reports queued for more than
    ``older_than`` seconds (``CALIBRA_REQUEUE_AFTER_S``, 120 by default).

    A kind's queued rows are left while messages wait in its queue, as one of them may be the
    row's own (``force`` sends anyway). ``include_running`` also sends running rows again: after
    a worker died on a broker that does not redeliver its task (the file-system one); not while
    a worker still runs them, which would do the same work twice at once. Resending is safe:
    the tasks do only what is missing and return at once for a finished row. Stops, with a
    warning, when the broker cannot be reached."""
    if older_than is None:
        older_than = float(getattr(settings, "CALIBRA_REQUEUE_AFTER_S", REQUEUE_AFTER_S))
    cutoff = (now or timezone.now()) - timedelta(seconds=older_than)
    result = Requeued()
    for kind, model in REQUEUE_KINDS.items():
        stale = model.objects.filter(created_at__lte=cutoff).order_by("created_at", "pk")
        queued = list(stale.filter(status=WorkerJob.Status.QUEUED).values_list("pk", flat=True))
        # A running row's message was taken by its worker: none of the waiting ones is its own.
        running = list(stale.filter(status=WorkerJob.Status.RUNNING).values_list("pk", flat=True)) \
            if include_running else []
        if not queued and not running:
            continue
        task = _task_for(model)
        if queued and not force:
            try:
                waiting = queue_waiting(task)
            except BROKER_ERRORS as exc:
                result.broker_error = f"{type(exc).__name__}: {exc}"
                break
            if waiting:
                result.waiting[kind] = waiting
                queued = []
        for pk in queued + running:
            if not enqueue(task, pk):
                result.broker_error = "the broker did not take a message (see the warning above)"
                break
            result.sent[kind].append(pk)
        if result.sent[kind]:
            log.warning("requeue: %s row(s) %s sent again (no message of theirs was waiting)", kind,
                        result.sent[kind])
        if result.broker_error:
            break
    if result.broker_error:
        log.warning("requeue: broker unavailable (%s); queued rows left for the next run",
                    result.broker_error)
    return result
