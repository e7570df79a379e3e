"""Sending Celery tasks so that the broker never fails a request nor loses a job.

A job's row (GenerationJob, ScoringJob, Report) holds its state; the broker's message only
tells a worker to look at it. A message that cannot be sent (the broker is down or
restarting) is therefore not the caller's error: a warning is logged, the row stays queued,
and ``annotate.services.jobs.jobs_requeue_stale`` sends it again once the broker is back
(every worker runs it when it starts and every minute, ``manage.py requeue_jobs`` by hand).
The tasks are idempotent, so a message sent twice costs a lookup, never work done twice.
"""
from __future__ import annotations

import logging

from django.db import transaction
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as KombuOperationalError

log = logging.getLogger(__name__)


def _broker_errors() -> tuple[type[BaseException], ...]:
    # kombu raises OperationalError once its publish retries are spent; a transport may let
    # its client's own errors or a socket's through.
    errors: list[type[BaseException]] = [KombuOperationalError, OSError]
    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover - redis comes with celery[redis]
        pass
    else:
        errors.append(RedisError)
    return tuple(errors)


BROKER_ERRORS = _broker_errors()


def _eager(task) -> bool:
    return bool(task.app.conf.task_always_eager)


def enqueue(task, *args, **kwargs) -> bool:
    """Send ``task`` now; False (and a warning) when the broker cannot take it.

    Tasks run inline (``CELERY_TASK_ALWAYS_EAGER``) raise their own errors as before: only
    the broker's are caught."""
    if _eager(task):
        task.delay(*args, **kwargs)
        return True
    try:
        task.delay(*args, **kwargs)
    except BROKER_ERRORS as exc:
        log.warning("broker unavailable, %s%s not sent (%s: %s): its row stays queued and is sent again "
                    "by requeue_jobs", task.name, tuple(args), type(exc).__name__, exc)
        return False
    return True


def enqueue_after_commit(task, *args, **kwargs) -> None:
    """Send ``task`` once the current transaction has committed (at once outside one), so that
    a worker never looks for a row that is not there yet; a broker error is logged, not raised."""
    transaction.on_commit(lambda: enqueue(task, *args, **kwargs))


def task_queue(task) -> str:
    """The queue ``task`` is routed to (CELERY_TASK_ROUTES)."""
    return task.app.amqp.router.route({}, task.name)["queue"].name


def queue_waiting(task) -> int:
    """How many messages wait in ``task``'s queue (0 with tasks run inline). Raises one of
    ``BROKER_ERRORS`` when the broker cannot be reached."""
    if _eager(task):
        return 0
    app = task.app
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2, interval_max=0.2)
        try:
            declared = connection.default_channel.queue_declare(queue=task_queue(task), passive=True)
            return declared.message_count
        except ChannelError:  # no such queue: nothing was ever sent to it, or it was emptied
            return 0
