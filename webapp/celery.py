"""The Celery app. Configuration comes from Django settings under the ``CELERY_`` prefix.

Every worker also sends again the jobs whose broker message was lost or never sent (a broker
outage): when it is ready, then every ``CALIBRA_REQUEUE_EVERY_S`` seconds (60 by default; 0
turns it off), from a thread of the worker's main process. No beat service is needed;
``manage.py requeue_jobs`` does the same by hand or from cron.
"""
import logging
import os
import random
import threading

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
app.autodiscover_tasks(["workers"], related_name="scoring_tasks")

log = logging.getLogger(__name__)
REQUEUE_EVERY_S = 60.0
_stop = threading.Event()


def requeue_sweep():
    """One pass of ``jobs_requeue_stale`` (its result, or None when skipped or failed), by one
    worker at a time where the workers share a cache (Redis): the others skip the pass. Never
    raises; leaves no database connection open (pool processes are forked from this one)."""
    from django.db import connections

    try:
        from django.core.cache import cache

        from annotate.services.jobs import jobs_requeue_stale

        try:
            if not cache.add("calibra:requeue-sweep", os.getpid(), timeout=max(1, int(_every() * 0.8))):
                return None
        except Exception as exc:  # noqa: BLE001 - a cache that is down must not stop the sweep
            log.info("requeue: cache unavailable (%s), sweeping anyway", exc)
        return jobs_requeue_stale()
    except Exception:  # noqa: BLE001 - a failed pass is logged; the next one tries again
        log.exception("requeue: the pass failed")
        return None
    finally:
        connections.close_all()


def _every() -> float:
    from django.conf import settings

    return float(getattr(settings, "CALIBRA_REQUEUE_EVERY_S", REQUEUE_EVERY_S))


def _sweep_forever(every: float) -> None:
    _stop.wait(random.uniform(0, min(5.0, every)))  # workers started together do not sweep together
    while not _stop.is_set():
        requeue_sweep()
        _stop.wait(every)


@worker_ready.connect
def _requeue_when_ready(sender=None, **kwargs) -> None:
    every = _every()
    if every <= 0:
        return
    _stop.clear()
    threading.Thread(target=_sweep_forever, args=(every,), name="calibra-requeue", daemon=True).start()


@worker_shutdown.connect
def _requeue_stop(sender=None, **kwargs) -> None:
    _stop.set()
