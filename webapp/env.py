"""The one place that reads the process environment.

Every setting that can differ between a laptop, CI and production is read here or
through ``env`` from here, so a reader can see all the knobs in one file.
"""
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# Local state of the embedded mode (SQLite file, media, file-system broker).
DATA_DIR = Path(env.str("CALIBRA_DATA_DIR", default=str(BASE_DIR / "data")))


def database_config(default_sqlite: Path) -> dict:
    """``DATABASE_URL`` parsed, with SQLite tuned for a web process and a worker sharing it."""
    url = env.str("DATABASE_URL", default="") or f"sqlite:///{default_sqlite}"  # empty means unset
    config = env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config.setdefault("OPTIONS", {}).update(
            {
                # WAL lets the worker write while the web process reads; IMMEDIATE avoids
                # "database is locked" upgrades from read to write transactions.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            }
        )
    else:
        config["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
        # A health check costs a round trip on every request; a broken connection is
        # dropped at the end of the request that met it anyway.
        config["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
        if config["ENGINE"] == "django.db.backends.postgresql" and env.bool("PG_PREPARED_STATEMENTS", default=True):
            # Server-side binding lets psycopg prepare statements that run often, so PostgreSQL
            # plans the annotation queries once per connection instead of on every call.
            # (Turn off behind a transaction-pooling PgBouncer.)
            config.setdefault("OPTIONS", {}).update({"server_side_binding": True, "prepare_threshold": 5})
    return config
