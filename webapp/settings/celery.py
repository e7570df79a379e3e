"""Celery, read by ``webapp/celery.py`` under the ``CELERY_`` namespace."""
from pathlib import Path

from webapp.env import DATA_DIR, env


def filesystem_broker_options(folder: Path) -> dict:
    """Transport options of kombu's file-system broker, in ``folder`` (created here).

    ``control_folder`` (the exchange-to-queue tables) is given too: kombu's default is
    ``control`` in the current working directory."""
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }


# The embedded default is kombu's file-system transport: a worker process and the web
# process exchange messages through a folder, with no broker service to install.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(DATA_DIR / "broker")
else:
    # With late acknowledgement an unacknowledged task comes back after this long; it
    # must exceed the longest task (jobs are split into chunks well under it).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
    }

# Job state lives in our own tables (generation jobs, reports), so no result backend is
# needed by default.
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_IGNORE_RESULT = CELERY_RESULT_BACKEND is None

CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=50 * 60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=55 * 60)

# Two queues: "gpu" for generation and scoring, "cpu" for everything else.
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ROUTES = {
    "workers.tasks.generation_*": {"queue": "gpu"},
    "workers.tasks.scoring_*": {"queue": "gpu"},
}

CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# A broker that is down costs a request well under a second: the message is not sent, the
# job's row stays queued, and the workers send it again when the broker is back
# (annotate/services/enqueue.py).
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                    "interval_max": 0.5}
CELERY_TASK_EAGER_PROPAGATES = True
