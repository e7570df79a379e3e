"""Celery entry points. They take ids (JSON), import heavy code lazily, and are idempotent.

Generation tasks match ``workers.tasks.generation_*``, which the settings route to the
"gpu" queue; they are acknowledged late, so a worker that dies mid-task leaves the task to
be redelivered, and the rerun makes only the images still missing.
"""
from celery import shared_task


@shared_task(name="workers.tasks.generation_job_run", acks_late=True)
def generation_job_run(job_id: int, fan_out: bool = True) -> list[int]:
    """Run a job here, or fan it out as chunk tasks when it spans several chunks. A fanned-out
    job is finished by its chunk tasks, after this task has returned: a chain whose next step
    needs the images passes ``fan_out=False`` (the job then runs whole in this task)."""
    from workers.jobs import generation_job_dispatch

    return generation_job_dispatch(job_id, fan_out=fan_out)


@shared_task(name="workers.tasks.generation_chunk_run", acks_late=True)
def generation_chunk_run(job_id: int, chunk_index: int, chunk_size: int) -> int:
    from workers.jobs import generation_chunk_execute

    return generation_chunk_execute(job_id, chunk_index, chunk_size)


@shared_task(name="workers.tasks.demo_studies_create")
def demo_studies_create() -> int:
    from annotate.services.demo import demo_studies_create as create

    return len(create())


@shared_task(name="workers.tasks.report_build", acks_late=True)
def report_build(report_id: int) -> str:
    """A study report's file (statistics and rendering on the CPU queue)."""
    from annotate.services.reports import report_build as build

    return build(report_id).file.name


@shared_task(name="workers.tasks.tia2_report_build", acks_late=True)
def tia2_report_build() -> str:
    """The reward models against TIA2's labels, for the dashboard (kept in the shared cache)."""
    from annotate.selectors_models import tia2_report_compute

    return tia2_report_compute()["fingerprint"]
