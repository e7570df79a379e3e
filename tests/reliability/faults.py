"""Fault injection for the reliability tests: a private Redis that can be killed and started
again, the Celery app pointed at another broker, an API client per annotator, and the
consistency checks of a study's counters."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import threading
from collections import Counter
from contextlib import contextmanager

import pytest
from django.db import connection
from django.db.models import Count
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.models import Assignment, Judgment, Skip, StudyItem, StudyMembership
from webapp.celery import app as celery_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own on a free port, without persistence: stopping it is
    an outage, starting it again a restart that lost whatever it held."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found (apt-get install redis-server)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--daemonize", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def llen(self, queue: str) -> int:
        import redis

        return redis.Redis.from_url(self.url).llen(queue)


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def celery_broker(url: str):
    """The Celery app of this process sends to ``url``, tasks not run inline."""
    conf = celery_app.conf
    # Celery prefers the CELERY_BROKER_URL environment variable to broker_url; not to these.
    names = ("broker_write_url", "broker_read_url", "broker_transport_options", "task_always_eager")
    saved = {name: conf.get(name) for name in names}

    def reset_pools():  # kombu keeps a pool per broker: the next send takes the one for the new URL
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    conf.update(broker_write_url=url, broker_read_url=url, broker_transport_options={},
                task_always_eager=False)
    reset_pools()
    try:
        yield
    finally:
        conf.update(saved)
        reset_pools()


def api_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def race(n: int, send) -> Counter:
    """``send(i)`` from ``n`` threads released at once; the statuses they got."""
    from tests.integration.test_concurrency import run_threads

    statuses: Counter = Counter()

    def target(i):
        statuses[send(i)] += 1

    errors = run_threads(n, target)
    assert not errors, errors
    return statuses


def check_study_consistent(study) -> dict:
    """The study's counters against its rows: judgments per item and annotator, skips and gold
    answers per annotator, slots taken (judgments + open leases), one judgment per annotator
    and item, none over redundancy."""
    judgments = Judgment.objects.filter(item__study=study)
    per_item = Counter(judgments.values_list("item_id", flat=True))
    active = Counter(Assignment.objects.filter(item__study=study, state=Assignment.State.ACTIVE)
                     .values_list("item_id", flat=True))
    for item in StudyItem.objects.filter(study=study):
        assert item.judgment_count == per_item[item.id], f"item {item.id}: judgment_count"
        assert item.taken == per_item[item.id] + active[item.id], f"item {item.id}: taken"
        assert per_item[item.id] <= study.redundancy, f"item {item.id}: over redundancy"
    per_annotator = Counter(judgments.values_list("annotator_id", flat=True))
    skips = Counter(Skip.objects.filter(item__study=study).values_list("annotator_id", flat=True))
    gold = judgments.filter(item__is_gold=True)
    gold_answered = Counter(gold.values_list("annotator_id", flat=True))
    gold_correct = Counter(gold.filter(gold_correct=True).values_list("annotator_id", flat=True))
    for membership in StudyMembership.objects.filter(study=study):
        who = membership.annotator_id
        assert membership.answered_count == per_annotator[who], f"annotator {who}: answered_count"
        assert membership.skipped_count == skips[who], f"annotator {who}: skipped_count"
        assert membership.gold_answered == gold_answered[who], f"annotator {who}: gold_answered"
        assert membership.gold_correct == gold_correct[who], f"annotator {who}: gold_correct"
    assert not judgments.values("item_id", "annotator_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    return {"judgments": sum(per_item.values()), "open_leases": sum(active.values())}


class BackendTerminator:
    """What the clients of a restarting PostgreSQL meet, again and again: every connection to
    this test database terminated (this database's only, never another's) every ``every``
    seconds, and once, for ``blocked_s``, new connections to it refused (ALLOW_CONNECTIONS
    false, on this test database only, put back after)."""

    def __init__(self, *, every: float = 0.05, blocked_s: float = 0.0):
        import psycopg

        cfg = connection.settings_dict
        self.dbname = cfg["NAME"]
        # From the maintenance database: PostgreSQL refuses ALTER DATABASE ... ALLOW_CONNECTIONS
        # false on the database of the connection that asks.
        self.conn = psycopg.connect(host=cfg["HOST"] or "127.0.0.1", port=cfg["PORT"] or 5432,
                                    user=cfg["USER"], password=cfg["PASSWORD"] or None, dbname="postgres",
                                    autocommit=True)
        self.every, self.blocked_s = every, blocked_s
        self.stop = threading.Event()
        self.terminated = 0
        self.rounds = 0
        self.thread = threading.Thread(target=self._run, name="terminator", daemon=True)

    def _terminate(self) -> None:
        self.terminated += self.conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", [self.dbname]
        ).fetchone()[0]
        self.rounds += 1

    def _allow(self, allowed: bool) -> None:
        self.conn.execute(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS {str(allowed).lower()}')

    def _run(self) -> None:
        blocked = False
        try:
            while not self.stop.wait(self.every):
                self._terminate()
                if self.blocked_s and self.rounds == 10:  # once, after a few rounds
                    self._allow(False)
                    blocked = True
                    self.stop.wait(self.blocked_s)
                    self._allow(True)
                    blocked = False
        finally:
            if blocked:
                self._allow(True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)
        try:
            self._allow(True)
        finally:
            self.conn.close()
        return False
