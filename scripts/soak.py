#!/usr/bin/env python
"""Soak test, by hand: annotators through gunicorn and generation jobs on a Celery worker,
while the worker is killed (SIGKILL) and PostgreSQL's backends are terminated at intervals.
Then it checks that nothing was lost or counted twice and that every job finished.

It reuses scripts/bench_annotation.py's machinery: its own PostgreSQL database (created,
migrated and dropped here), a pairwise study built through the services, gunicorn (gthread,
persistent database connections: a terminated backend is met by a kept connection, as after
a real restart), and the asyncio HTTP client. The annotators behave as the annotator page
does: a 503 or a dropped connection is retried, a submission with the same client_id.

    .venv/bin/python scripts/soak.py --seconds 300

Faults, for --seconds: every --kill-worker-every seconds the worker gets SIGKILL and a new
one starts (running ``requeue_jobs --running``: the file-system broker does not redeliver a
dead worker's task); every --terminate-every seconds every backend of the soak database is
terminated (this database's only). Afterwards, up to --settle seconds for the jobs to finish.

Checks (exit status 0 when all hold): no response was a 500 or any status other than 2xx or
a 503 that says "unavailable"; every acknowledged judgment is stored once and nothing else is
(bench_annotation.verify: counters, slots, redundancy); every job succeeded with exactly its
images, each (checkpoint, prompt, seed, index) once.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_annotation as bench  # noqa: E402

DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/calibra_soak"
bench.DATA_DIR = "/tmp/soak-data"  # the soak's own file-system broker, media and logs


def log(*args) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# --- jobs (in a Django subprocess, like bench's data) ---------------------------------------

def create_jobs(n_jobs: int, prompts: int, size: int) -> None:
    import django

    django.setup()
    from annotate.models import Checkpoint, Dataset, Prompt
    from annotate.services.generation import generation_job_create

    dataset = Dataset.objects.create(name="soak jobs", source=Dataset.Source.CUSTOM)
    Prompt.objects.bulk_create([Prompt(dataset=dataset, source_index=i, text=f"a realistic photo of {i % 9 + 1} cups")
                                for i in range(prompts)])
    checkpoint = Checkpoint.objects.create(name="soak-procedural", backend=Checkpoint.Backend.PROCEDURAL,
                                           config={"batch_size": 4})
    for k in range(n_jobs):  # each enqueued after its commit, to the worker's broker
        generation_job_create(checkpoint=checkpoint, dataset=dataset, seeds=[k], images_per_seed=2,
                              width=size, height=size)


def manage(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([bench.PYTHON, "manage.py", *args], cwd=bench.SRC, env=bench.django_env(db_url),
                          capture_output=True, text=True, check=check, timeout=120)


class Worker:
    """The Celery worker process, killed and replaced on demand."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.log_path = Path(bench.DATA_DIR) / "worker.log"

    def start(self) -> None:
        with self.log_path.open("a") as out:
            self.proc = subprocess.Popen(
                [bench.PYTHON, "-m", "celery", "-A", "webapp", "worker", "--queues", "gpu,cpu", "--pool", "solo",
                 "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"],
                cwd=bench.SRC, env=bench.django_env(self.db_url), stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def terminate_backends(db_url: str) -> int:
    import psycopg

    with psycopg.connect(bench._with_dbname(db_url, "postgres"), autocommit=True) as conn:
        return conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                            [bench._dbname(db_url)]).fetchone()[0]


# --- annotators that retry as the annotator page does ----------------------------------------

class Run(bench.Run):
    def __init__(self):
        super().__init__()
        self.statuses: Counter = Counter()  # (endpoint, status)
        self.bad: list = []                 # responses other than 2xx and a 503 "unavailable"


async def _post(run: Run, client: bench.HttpClient, path: bytes, body: bytes, endpoint: str,
                give_up: float) -> tuple[int, bytes] | None:
    attempt = 0
    while time.monotonic() < give_up:
        try:
            status, answer = await client.post(path, body)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            run.statuses[(endpoint, type(exc).__name__)] += 1
        else:
            run.statuses[(endpoint, status)] += 1
            if status in (200, 201):
                return status, answer
            if status == 429:  # the rate limit: the page waits and sends it again
                await asyncio.sleep(1.0)
                continue
            if status != 503 or b'"unavailable"' not in answer:
                run.bad.append((endpoint, status, answer[:300].decode(errors="replace")))
                return None
        attempt += 1
        await asyncio.sleep(min(2.0, 0.05 * 2 ** min(attempt, 6)) * (1 + random.random() / 4))
    return None


async def annotator(run: Run, port: int, token: str, study: str, stop: asyncio.Event, settle: float,
                    pause: float) -> None:
    client = bench.HttpClient("127.0.0.1", port, token)
    next_path, submit_path = f"/api/annotate/{study}/next/".encode(), f"/api/annotate/{study}/submit/".encode()
    rng = random.Random()
    try:
        while not stop.is_set():
            got = await _post(run, client, next_path, b'{"exclude": []}', "next", time.monotonic() + settle)
            if got is None:
                return
            data = json.loads(got[1])
            if data.get("done"):
                run.done += 1
                return
            client_id = str(uuid.uuid4())
            run.uncertain.add(client_id)
            body = json.dumps({"item": data["item"], "lease": data["lease"], "client_id": client_id,
                               "choice": rng.choice(("left", "right")), "time_spent_ms": rng.randint(800, 4000)}).encode()
            # Once sent, an answer is resent until the server has it, even after the stop.
            got = await _post(run, client, submit_path, body, "submit", time.monotonic() + settle)
            if got is not None:
                run.acked.add(client_id)
                run.uncertain.discard(client_id)
                run.created += got[0] == 201
                run.repeats += got[0] == 200
            await asyncio.sleep(rng.uniform(0.5, 1.5) * pause)  # looking at the next item
    finally:
        client.close()


async def drive(args, port: int, study: dict, tokens: list[str], faults) -> Run:
    run, stop = Run(), asyncio.Event()
    tasks = [asyncio.create_task(annotator(run, port, tokens[i], study["public_id"], stop, args.settle, args.pause))
             for i in range(args.annotators)]
    loop = asyncio.get_running_loop()
    fault_thread = loop.run_in_executor(None, faults)
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    await fault_thread
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120, help="seconds of load and faults (default 120)")
    p.add_argument("--settle", type=float, default=120, help="most seconds for jobs to finish afterwards")
    p.add_argument("--annotators", type=int, default=30)
    p.add_argument("--pause", type=float, default=0.5, help="an annotator's mean seconds per item (default 0.5)")
    p.add_argument("--items", type=int, default=20_000, help="items in the study (default 20000)")
    p.add_argument("--jobs", type=int, default=10, help="generation jobs (procedural) run meanwhile")
    p.add_argument("--job-prompts", type=int, default=30, help="prompts per job (2 images each)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--kill-worker-every", type=float, default=15.0)
    p.add_argument("--terminate-every", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    p.add_argument("--port", type=int, default=8110)
    p.add_argument("--database-url", default=DEFAULT_DB_URL,
                   help=f"the soak database, created and dropped here (default {DEFAULT_DB_URL})")
    p.add_argument("--keep", action="store_true", help="keep the database afterwards")
    p.add_argument("--_jobs", dest="jobs_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.jobs_only:
        create_jobs(args.jobs, args.job_prompts, args.image_size)
        return 0

    db_url = args.database_url
    Path(bench.DATA_DIR).mkdir(parents=True, exist_ok=True)
    for folder in ("broker", "media"):
        subprocess.run(["rm", "-rf", str(Path(bench.DATA_DIR) / folder)], check=True)
    data = bench.prepare(db_url, args.annotators, args.items, ["soak"])
    study = data["studies"]["soak"]
    subprocess.run([bench.PYTHON, __file__, "--_jobs", "--jobs", str(args.jobs), "--job-prompts",
                    str(args.job_prompts), "--image-size", str(args.image_size)],
                   cwd=bench.SRC, env=bench.django_env(db_url), check=True)
    gunicorn_args = argparse.Namespace(port=args.port, workers=args.workers, worker_class="gthread",
                                       threads=args.threads)
    worker = Worker(db_url)
    gunicorn = None
    faults_seen = Counter()
    ok = False
    try:
        gunicorn = bench.gunicorn_start(gunicorn_args, db_url)
        worker.start()
        end = time.monotonic() + args.seconds

        def faults() -> None:
            next_kill = time.monotonic() + args.kill_worker_every
            next_terminate = time.monotonic() + args.terminate_every
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_kill:
                    worker.kill()
                    worker.start()
                    manage(db_url, "requeue_jobs", "--running", "--older-than", "0", check=False)
                    faults_seen["worker_killed"] += 1
                    next_kill = now + args.kill_worker_every
                if now >= next_terminate:
                    faults_seen["backends_terminated"] += terminate_backends(db_url)
                    faults_seen["terminations"] += 1
                    next_terminate = now + args.terminate_every
                time.sleep(0.1)

        log(f"{args.seconds:g} s of load: {args.annotators} annotators; worker killed every "
            f"{args.kill_worker_every:g} s, backends terminated every {args.terminate_every:g} s")
        run = asyncio.run(drive(args, args.port, study, data["tokens"], faults))

        log("faults stopped; letting the jobs finish")
        if worker.proc is None or worker.proc.poll() is not None:
            worker.start()
        manage(db_url, "requeue_jobs", "--running", "--older-than", "0", check=False)
        jobs = wait_for_jobs(db_url, args.settle)
        checks = bench.verify(db_url, study, run)
        job_checks = verify_jobs(db_url, jobs)
        integrity = (checks["lost"] == 0 and checks["unacknowledged_stored"] == 0 and checks["duplicated"] == 0
                     and checks["over_redundancy"] == 0 and checks["judgment_count_mismatch"] == 0
                     and checks["taken_mismatch"] == 0 and not run.uncertain)
        server_errors = sum(n for (_, status), n in run.statuses.items() if status == 500)
        ok = integrity and not run.bad and server_errors == 0 and job_checks["pass"]
        print(json.dumps({
            "seconds": args.seconds, "annotators": args.annotators, "faults": dict(faults_seen),
            "acknowledged": len(run.acked), "created": run.created, "repeats": run.repeats,
            "responses": {f"{e} {s}": n for (e, s), n in sorted(run.statuses.items(), key=str)},
            "bad_responses": run.bad[:10], "server_errors_500": server_errors, **checks, "jobs": job_checks,
            "pass": ok,
        }, default=str), flush=True)
    finally:
        worker.stop()
        if gunicorn is not None:
            bench.gunicorn_stop(gunicorn)
        if not args.keep:
            bench.db_drop(db_url)
            log(f"database {bench._dbname(db_url)} dropped")
    return 0 if ok else 1


def wait_for_jobs(db_url: str, seconds: float) -> list[tuple]:
    import psycopg

    deadline = time.monotonic() + seconds
    while True:
        with psycopg.connect(db_url) as conn:
            jobs = conn.execute("SELECT id, status, done_images, total_images FROM annotate_generationjob "
                                "ORDER BY id").fetchall()
        if all(status == "succeeded" for _, status, _, _ in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def verify_jobs(db_url: str, jobs: list[tuple]) -> dict:
    import psycopg

    with psycopg.connect(db_url) as conn:
        duplicated = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM annotate_image WHERE checkpoint_id IS NOT NULL "
            "GROUP BY checkpoint_id, prompt_id, seed, index HAVING count(*) > 1) d").fetchone()[0]
        made = dict(conn.execute("SELECT job_id, count(*) FROM annotate_image WHERE job_id IS NOT NULL "
                                 "GROUP BY job_id").fetchall())
    unfinished = [j for j in jobs if j[1] != "succeeded" or j[2] != j[3]]
    # A redone image keeps the row of the run that made it first; count the job's own images.
    short = [j[0] for j in jobs if made.get(j[0], 0) != j[3]]
    return {"jobs": len(jobs), "unfinished": unfinished, "image_count_mismatch": short,
            "duplicated_images": duplicated, "pass": not unfinished and not short and duplicated == 0}


if __name__ == "__main__":
    sys.exit(main())
