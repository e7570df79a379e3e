"""Celery entry points. They take ids (JSON), import heavy code lazily, and are idempotent.

Generation tasks match ``workers.tasks.generation_*``, which the settings route to the
"gpu" queue; they are acknowledged late, so a worker that dies mid-task leaves the task to
be redelivered, and the rerun makes only the images still missing. A message for a row that
is already finished (sent twice: by ``requeue_jobs`` after a broker outage, or redelivered)
returns at once and changes nothing. A job whose database went away (a restart) is run again
in the same task once it is back, for up to about two minutes, rather than left failed.
"""
import logging
import time

from celery import shared_task

log = logging.getLogger(__name__)

# Waits between runs of a job whose database connection failed: about two minutes in all,
# what a PostgreSQL restart or failover takes.
DATABASE_RETRY_DELAYS_S = (1, 2, 4, 8, 15, 30, 30, 30)


def finished(model, pk: int) -> bool:
    """Whether the row's work is done (succeeded or cancelled): a repeated message's no-op."""
    status = model.objects.filter(pk=pk).values_list("status", flat=True).first()
    return status in ("succeeded", "cancelled")


def through_database_restarts(what: str, run):
    """``run()``, again after a pause while it fails because the database cannot be reached (it
    does only what is missing, and records the job running again). The last failure is raised."""
    from django.db import connections
    from django.db.utils import InterfaceError, OperationalError

    for delay in (*DATABASE_RETRY_DELAYS_S, None):
        try:
            return run()
        except (OperationalError, InterfaceError) as exc:
            if delay is None:
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0]
            log.warning("%s: database unavailable (%s: %s); running it again in %s s", what, type(exc).__name__,
                        first_line, delay)
            connections.close_all()  # the next query opens a new connection
            time.sleep(delay)


@shared_task(name="workers.tasks.generation_job_run", acks_late=True)
def generation_job_run(job_id: int, fan_out: bool = True) -> list[int]:
    """Run a job here, or fan it out as chunk tasks when it spans several chunks. A fanned-out
    job is finished by its chunk tasks, after this task has returned: a chain whose next step
    needs the images passes ``fan_out=False`` (the job then runs whole in this task)."""
    from django.db.utils import InterfaceError, OperationalError
    from django.utils import timezone
    from kombu.exceptions import OperationalError as BrokerUnavailable

    from annotate.models import GenerationJob
    from workers.jobs import generation_job_dispatch

    def run():
        if finished(GenerationJob, job_id):
            return []
        try:
            return generation_job_dispatch(job_id, fan_out=fan_out)
        except BrokerUnavailable as exc:
            # The chunk tasks could not all be sent: this task makes the rest itself (the chunks
            # already sent skip what it made, and it skips theirs).
            log.warning("generation job %s: chunk tasks not sent (%s); running it whole here", job_id, exc)
            return generation_job_dispatch(job_id, fan_out=False)

    try:
        return through_database_restarts(f"generation job {job_id}", run)
    except (OperationalError, InterfaceError):
        raise  # the row cannot be written; the requeue sweep sends it again once the database is back
    except Exception as exc:
        # A failure before the job started (planning it, sending its chunks) would leave it
        # queued, and the requeue sweep would send it again every minute: it fails, saying why.
        GenerationJob.objects.filter(pk=job_id, status__in=("queued", "running")).update(
            status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now())
        raise


@shared_task(name="workers.tasks.generation_chunk_run", acks_late=True)
def generation_chunk_run(job_id: int, chunk_index: int, chunk_size: int) -> int:
    from workers.jobs import generation_chunk_execute

    return through_database_restarts(f"generation job {job_id} chunk {chunk_index}",
                                     lambda: generation_chunk_execute(job_id, chunk_index, chunk_size))


@shared_task(name="workers.tasks.demo_studies_create")
def demo_studies_create() -> int:
    from annotate.services.demo import demo_studies_create as create

    return len(create())


@shared_task(name="workers.tasks.report_build", acks_late=True)
def report_build(report_id: int) -> str:
    """A study report's file (statistics and rendering on the CPU queue)."""
    from annotate.models import Report
    from annotate.services.reports import report_build as build

    def run():
        if finished(Report, report_id):
            return Report.objects.get(pk=report_id).file.name
        return build(report_id).file.name

    return through_database_restarts(f"report {report_id}", run)


@shared_task(name="workers.tasks.tia2_report_build", acks_late=True)
def tia2_report_build() -> str:
    """The reward models against TIA2's labels, for the dashboard (kept in the shared cache)."""
    from annotate.selectors_models import tia2_report_compute

    return tia2_report_compute()["fingerprint"]
