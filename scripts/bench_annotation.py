#!/usr/bin/env python
"""Benchmark of the annotation engine: simulated annotators against gunicorn and PostgreSQL.

A script, not a timed test. It makes its own PostgreSQL database, migrates it, builds a
pairwise study through the project's services, starts gunicorn on it and drives it with
simulated annotators (next item -> submit, in a loop), in two modes:

- saturation: 50 annotators with no pause. Targets on 2 cores: >= 250 judgments/s and
  <= 8 ms of server CPU (gunicorn and PostgreSQL) per judgment.
- realistic: 100 annotators, each pausing 1 s per item. Target: p99 of next + submit
  <= 100 ms.
- gold (``--mode gold``): a quarter of the items gold; 20 annotators answer until 400 submits
  are timed. Target: gold and other submits take the same time (medians within 15%, and a
  two-sided Mann-Whitney test finds no difference, p > 0.05), so that an annotator cannot tell
  gold items by how long their answers take.

It prints one JSON line per mode, then checks with SQL that no acknowledged judgment was
lost or duplicated and that no item holds more judgments than its redundancy.

    .venv/bin/python scripts/bench_annotation.py --mode both --seconds 60

To benchmark a commit rather than the working tree (others may be editing it), export it and
pass --src; the venv of this checkout runs it:

    mkdir /tmp/calibra-src && git archive HEAD | tar -x -C /tmp/calibra-src
    .venv/bin/python scripts/bench_annotation.py --src /tmp/calibra-src

Exit status 0 when every target and every integrity check passed, 1 otherwise.

The load generator is a small HTTP/1.1 client on asyncio streams (standard library only,
keep-alive when the server allows it), so that it costs little of the CPU it shares with
the server. Server CPU is read from /proc: utime + stime (children included) of the
gunicorn master and workers and of every PostgreSQL server process. On a shared server that
includes other databases' work: ``other_db_backends_cpu_s`` is what their live backends used in
the window, and ``machine_cpu_busy_cores`` shows how much of the machine everyone used.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
# The project tree under test (--src): this checkout by default, or e.g. a `git archive` export
# of a commit, to compare a baseline with a change using the same venv.
SRC = ROOT
DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/calibra_bench"
DATA_DIR = "/tmp/bench-data"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "saturation": {"judgments_per_s_min": 250.0, "server_cpu_ms_per_judgment_max": 8.0},
    "realistic": {"rt_p99_ms_max": 100.0},
    "gold": {"median_ratio_max": 1.15, "mann_whitney_p_min": 0.05},
}
DEFAULT_ANNOTATORS = {"saturation": 50, "realistic": 100, "gold": 20}
GOLD_SHARE = 0.25


def log(*args) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# --- database and data -------------------------------------------------------------------

def _with_dbname(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def _dbname(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/")


def db_recreate(url: str) -> None:
    import psycopg

    name = _dbname(url)
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing database name {name!r}: letters, digits and '_' only")
    with psycopg.connect(_with_dbname(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def db_drop(url: str) -> None:
    import psycopg

    with psycopg.connect(_with_dbname(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_dbname(url)}" WITH (FORCE)')


def django_env(db_url: str) -> dict:
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "webapp.settings.local",
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-" + "x" * 40,
        "CONN_MAX_AGE": "600",
        "LOG_LEVEL": "WARNING",
        "CALIBRA_DATA_DIR": DATA_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(SRC),
    })
    env.pop("CELERY_BROKER_URL", None)  # the file-system broker under CALIBRA_DATA_DIR
    return env


def build_data(n_users: int, n_items: int, modes: list[str], out: str) -> None:
    """Runs in a subprocess with the bench DATABASE_URL: the data, through the services."""
    sys.path.insert(0, str(SRC))
    import django

    django.setup()
    from django.conf import settings

    # Passwords are never used (the clients authenticate with tokens): hash them cheaply.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    from rest_framework.authtoken.models import Token

    from annotate.models import Checkpoint, Dataset, Image, Prompt, Study, StudyItem
    from annotate.roles import ANNOTATORS
    from annotate.services.accounts import user_create_with_role
    from annotate.services.studies import study_add_members, study_create_pairwise, study_open

    seeds = 10
    n_prompts = math.ceil(n_items / seeds)
    dataset = Dataset.objects.create(name="bench", source=Dataset.Source.CUSTOM)
    Prompt.objects.bulk_create(
        [Prompt(dataset=dataset, source_index=i, text=f"bench prompt {i}: a red cube left of a blue sphere")
         for i in range(n_prompts)], batch_size=5000)
    prompts = list(dataset.prompts.order_by("source_index"))
    checkpoints = [Checkpoint.objects.create(name=f"bench-{k}", backend=Checkpoint.Backend.PROCEDURAL)
                   for k in ("a", "b")]
    images = []
    for checkpoint in checkpoints:
        for prompt in prompts:
            for seed in range(seeds):
                name = f"images/bench/{checkpoint.name}_{prompt.source_index}_{seed}.jpg"
                images.append(Image(prompt=prompt, checkpoint=checkpoint, seed=seed, index=0, file=name,
                                    sha256=hashlib.sha256(name.encode()).hexdigest(), size_bytes=20_000,
                                    width=512, height=512))
    Image.objects.bulk_create(images, batch_size=5000)

    usernames, tokens = [], []
    for i in range(n_users):
        user = user_create_with_role(username=f"bench{i:04d}", password=uuid.uuid4().hex, role=ANNOTATORS)
        usernames.append(user.username)
        tokens.append(Token.objects.get_or_create(user=user)[0].key)

    studies = {}
    for mode in modes:
        study = study_create_pairwise(name=f"bench {mode}", dataset=dataset, checkpoints=checkpoints,
                                      redundancy=3)
        study_add_members(study=study, usernames=usernames)
        study = study_open(study=study)
        studies[mode] = {"id": study.pk, "public_id": str(study.public_id), "redundancy": study.redundancy,
                         "items": study.items.count()}
        if mode == "gold":  # gold answers known, and no pause: every annotator keeps answering
            Study.objects.filter(pk=study.pk).update(gold_min_accuracy=0.0)
            items = list(study.items.values_list("pk", "public_id"))
            gold = random.Random(0).sample(items, round(GOLD_SHARE * len(items)))
            StudyItem.objects.filter(pk__in=[pk for pk, _ in gold]).update(is_gold=True, gold_answer="a")
            studies[mode]["gold_items"] = [str(public_id) for _, public_id in gold]
    assert all(s.status == Study.Status.OPEN for s in Study.objects.all())
    with open(out, "w") as fh:
        json.dump({"studies": studies, "tokens": tokens}, fh)


def prepare(db_url: str, n_users: int, n_items: int, modes: list[str]) -> dict:
    t0 = time.monotonic()
    db_recreate(db_url)
    env = django_env(db_url)
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=SRC, env=env, check=True)
    log(f"database {_dbname(db_url)} created and migrated in {time.monotonic() - t0:.1f} s")
    with tempfile.NamedTemporaryFile("r", suffix=".json", dir=DATA_DIR) as out:
        subprocess.run([PYTHON, __file__, "--src", str(SRC), "--_build-data", out.name,
                        "--_users", str(n_users), "--_items", str(n_items), "--_modes", ",".join(modes)],
                       cwd=SRC, env=env, check=True)
        data = json.load(out)
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # planner statistics as a running deployment would have them
    log(f"data built in {time.monotonic() - t0:.1f} s: {n_users} annotators, "
        + ", ".join(f"{m}: {s['items']} items" for m, s in data["studies"].items()))
    return data


# --- CPU accounting from /proc -----------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, CPU ticks of the process and its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            raw = fh.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()
    # f[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17.
    return comm, int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])


def _all_stats() -> dict[int, tuple[str, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            stats[int(entry)] = s
    return stats


def cpu_snapshot(gunicorn_pid: int, db_url: str) -> dict:
    """CPU seconds so far: the gunicorn tree, all PostgreSQL processes, and the client
    backends of other databases (other people's work on the same server, for reference)."""
    stats = _all_stats()
    web = sum(s[2] for pid, s in stats.items() if pid == gunicorn_pid or s[1] == gunicorn_pid)
    pg_pids = {pid for pid, s in stats.items() if s[0] == "postgres"}
    db = sum(stats[pid][2] for pid in pg_pids)
    other = {}
    try:
        import psycopg

        with psycopg.connect(_with_dbname(db_url, "postgres"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND datname IS DISTINCT FROM %s AND pid <> pg_backend_pid()", [_dbname(db_url)]).fetchall()
        other = {pid: stats[pid][2] for (pid,) in rows if pid in stats}
    except Exception as exc:  # noqa: BLE001 - only a breakdown
        log(f"pg_stat_activity unavailable: {exc}")
    with open("/proc/stat") as fh:
        cpu = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(cpu) - cpu[3] - cpu[4]  # all but idle and iowait
    return {"web": web / CLK_TCK, "db": db / CLK_TCK, "other_db_backends": other,
            "machine_busy": busy / CLK_TCK, "wall": time.monotonic()}


def cpu_delta(a: dict, b: dict) -> dict:
    other = sum(v - a["other_db_backends"].get(pid, 0) for pid, v in b["other_db_backends"].items()) / CLK_TCK
    return {"web": b["web"] - a["web"], "db": b["db"] - a["db"], "other_db_backends": other,
            "machine_busy": b["machine_busy"] - a["machine_busy"], "wall": b["wall"] - a["wall"]}


# --- gunicorn ----------------------------------------------------------------------------

def gunicorn_start(args, db_url: str) -> subprocess.Popen:
    cmd = [str(VENV_BIN / "gunicorn"), "webapp.wsgi:application", "--bind", f"127.0.0.1:{args.port}",
           "--workers", str(args.workers), "--worker-class", args.worker_class, "--log-level", "warning",
           "--timeout", "60", "--backlog", "2048", "--keep-alive", "30", "--chdir", str(SRC)]
    if args.worker_class == "gthread":
        cmd += ["--threads", str(args.threads)]
    with open(Path(DATA_DIR) / "gunicorn.log", "w") as logfile:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, cwd=SRC, env=django_env(db_url), stdout=logfile, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    import http.client

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}; see {DATA_DIR}/gunicorn.log:\n"
                             + Path(DATA_DIR, "gunicorn.log").read_text()[-3000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.terminate()
        raise SystemExit("gunicorn did not answer /healthz within 30 s")
    log(f"gunicorn pid {proc.pid} on port {args.port}: {args.workers} {args.worker_class} workers"
        + (f" x {args.threads} threads" if args.worker_class == "gthread" else ""))
    return proc


def gunicorn_stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the load generator ------------------------------------------------------------------

class HttpClient:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int, token: str):
        self.host, self.port = host, port
        self.head = (f"Host: {host}:{port}\r\nAuthorization: Token {token}\r\n"
                     "Content-Type: application/json\r\nAccept: application/json\r\n").encode()
        self.reader = self.writer = None
        self.retry_after = 0.0  # of the last answer: its Retry-After header in seconds, else 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: bytes, body: bytes) -> tuple[int, bytes]:
        request = (b"POST " + path + b" HTTP/1.1\r\n" + self.head
                   + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for attempt in range(3):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                lower = head.lower()
                close = b"\r\nconnection: close" in lower
                j = lower.find(b"\r\nretry-after:")
                self.retry_after = float(lower[j + 14: lower.index(b"\r\n", j + 2)]) if j >= 0 else 0.0
                i = lower.find(b"\r\ncontent-length:")
                if i >= 0:
                    length = int(lower[i + 17: lower.index(b"\r\n", i + 2)])
                    body_in = await self.reader.readexactly(length)
                elif b"\r\ntransfer-encoding: chunked" in lower:
                    chunks = []
                    while True:
                        size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        chunks.append(await self.reader.readexactly(size + 2))
                        if size == 0:
                            break
                    body_in = b"".join(c[:-2] for c in chunks)
                else:
                    body_in, close = await self.reader.read(), True
                if close:
                    self.close()
                return status, body_in
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                self.close()
                # A kept-alive connection the server closed meanwhile: resend once on a new one.
                # Resending is safe: next returns the lease held, submit is idempotent by client_id.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class Run:
    def __init__(self):
        self.measuring = False
        self.stop = asyncio.Event()
        self.acked: set[str] = set()      # client ids the server acknowledged as stored (201 or 200)
        self.created = 0                  # 201 responses
        self.repeats = 0                  # 200 responses to a resent submit
        self.uncertain: set[str] = set()  # submits whose answer never arrived (transport errors)
        self.errors: Counter = Counter()
        self.done = 0
        # (end, next_s, submit_s) of the judgments acknowledged inside the measured window
        self.samples: list[tuple[float, float, float]] = []


async def annotator(run: Run, host: str, port: int, token: str, study: str, pause: float, start_delay: float):
    client = HttpClient(host, port, token)
    next_path = f"/api/annotate/{study}/next/".encode()
    submit_path = f"/api/annotate/{study}/submit/".encode()
    rng = random.Random()
    if start_delay:
        await asyncio.sleep(start_delay)
    try:
        while not run.stop.is_set():
            t0 = time.perf_counter()
            try:
                status, body = await client.post(next_path, b'{"exclude": []}')
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                run.errors[f"next_{type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            if status != 200:
                run.errors[f"next_{status}"] += 1
                await asyncio.sleep(0.05)
                continue
            data = json.loads(body)
            if data.get("done"):
                run.done += 1
                return
            client_id = str(uuid.uuid4())
            payload = json.dumps({"item": data["item"], "lease": data.get("lease"), "client_id": client_id,
                                  "choice": rng.choice(("left", "right", "tie")),
                                  "time_spent_ms": rng.randint(800, 4000)}).encode()
            t1 = time.perf_counter()
            try:
                status, body = await client.post(submit_path, payload)
                # Refused for now (429: the rate limit; 503: a service restarting): wait what
                # Retry-After says and send the same answer again, as annotate.js does.
                while status in (429, 503) and not run.stop.is_set():
                    run.errors[f"submit_{status}"] += 1
                    try:
                        await asyncio.wait_for(run.stop.wait(), timeout=max(client.retry_after, 0.05))
                    except TimeoutError:
                        pass
                    status, body = await client.post(submit_path, payload)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                run.errors[f"submit_{type(exc).__name__}"] += 1
                run.uncertain.add(client_id)
                continue
            t2 = time.perf_counter()
            if status == 201:
                run.created += 1
                run.acked.add(client_id)
            elif status == 200:
                run.repeats += 1
                run.acked.add(client_id)
            elif status in (429, 503):  # still refused when the run stopped
                run.uncertain.add(client_id)
                continue
            else:
                run.errors[f"submit_{status}"] += 1
                continue
            if run.measuring:  # completed inside the measured window
                run.samples.append((t2, t1 - t0, t2 - t1))
            if pause:
                try:
                    await asyncio.wait_for(run.stop.wait(), timeout=pause)
                except TimeoutError:
                    pass
    finally:
        client.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


async def drive(args, mode: str, study: dict, tokens: list[str], n: int, gunicorn_pid: int,
                db_url: str) -> dict:
    run = Run()
    pause = args.pause if mode == "realistic" else 0.0
    tasks = [asyncio.create_task(annotator(run, "127.0.0.1", args.port, tokens[i], study["public_id"], pause,
                                           random.random() * pause))
             for i in range(n)]
    await asyncio.sleep(args.warmup)
    loop = asyncio.get_running_loop()
    cpu0, ru0 = await loop.run_in_executor(None, cpu_snapshot, gunicorn_pid, db_url), resource.getrusage(
        resource.RUSAGE_SELF)
    start = time.perf_counter()
    run.measuring = True
    await asyncio.sleep(args.seconds)
    end = time.perf_counter()
    run.measuring = False
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu1 = await loop.run_in_executor(None, cpu_snapshot, gunicorn_pid, db_url)
    run.stop.set()
    await asyncio.gather(*tasks)

    window = end - start
    samples = run.samples
    rts = [(a + b) * 1000 for _, a, b in samples]
    nexts = [a * 1000 for _, a, _ in samples]
    submits = [b * 1000 for _, _, b in samples]
    cpu = cpu_delta(cpu0, cpu1)
    judgments = len(samples)
    per = (lambda s: round(s * 1000 / judgments, 3)) if judgments else (lambda s: None)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "run": run, "judgments": judgments, "window": window,
        "judgments_per_s": round(judgments / window, 1),
        "rt_median_ms": _round(statistics.median(rts) if rts else None),
        "rt_p99_ms": _round(_percentile(rts, 0.99)),
        "rt_max_ms": _round(max(rts) if rts else None),
        "next_median_ms": _round(statistics.median(nexts) if nexts else None),
        "next_p99_ms": _round(_percentile(nexts, 0.99)),
        "submit_median_ms": _round(statistics.median(submits) if submits else None),
        "submit_p99_ms": _round(_percentile(submits, 0.99)),
        "server_cpu_ms_per_judgment": per(cpu["web"] + cpu["db"]),
        "server_cpu_ms_per_judgment_excl_other_dbs": per(cpu["web"] + cpu["db"] - cpu["other_db_backends"]),
        "web_cpu_ms_per_judgment": per(cpu["web"]),
        "db_cpu_ms_per_judgment": per(cpu["db"]),
        "server_cpu_cores": round((cpu["web"] + cpu["db"]) / window, 2),
        "other_db_backends_cpu_s": round(cpu["other_db_backends"], 2),
        "machine_cpu_busy_cores": round(cpu["machine_busy"] / window, 2),
        "client_cpu_s": round(client_cpu, 2),
        "client_cpu_ms_per_judgment": per(client_cpu),
    }


async def gold_annotator(args, run: Run, token: str, study: str, gold: set, timed: list, want: int):
    """Next, then submit, timing the submit and noting whether the item was gold."""
    client = HttpClient("127.0.0.1", args.port, token)
    next_path, submit_path = f"/api/annotate/{study}/next/".encode(), f"/api/annotate/{study}/submit/".encode()
    rng = random.Random()
    try:
        while len(timed) < want:
            status, body = await client.post(next_path, b'{"exclude": []}')
            data = json.loads(body)
            if status != 200 or data.get("done"):
                run.errors[f"next_{status}"] += 1
                return
            payload = json.dumps({"item": data["item"], "lease": data.get("lease"), "client_id": str(uuid.uuid4()),
                                  "choice": rng.choice(("left", "right", "tie"))}).encode()
            t0 = time.perf_counter()
            status, _ = await client.post(submit_path, payload)
            spent = (time.perf_counter() - t0) * 1000
            if status != 201:
                run.errors[f"submit_{status}"] += 1
                await asyncio.sleep(client.retry_after if status == 429 else 0.05)
                continue
            timed.append((data["item"] in gold, spent))
            await asyncio.sleep(0.1 + 0.1 * rng.random())  # under the submit rate limit, not in lock step
    finally:
        client.close()


def run_gold(args, data: dict) -> dict:
    """Gold and other submits, timed alike; compared by their medians and a Mann-Whitney test."""
    from scipy.stats import mannwhitneyu

    study = data["studies"]["gold"]
    n = args.annotators or DEFAULT_ANNOTATORS["gold"]
    run, timed, warm = Run(), [], []

    async def go():  # a warm-up, untimed, then the timed submits
        await asyncio.gather(*(gold_annotator(args, run, data["tokens"][i], study["public_id"],
                                              set(study["gold_items"]), warm, 4 * n) for i in range(n)))
        await asyncio.gather(*(gold_annotator(args, run, data["tokens"][i], study["public_id"],
                                              set(study["gold_items"]), timed, args.gold_submits) for i in range(n)))

    log(f"gold: {n} annotators, {args.gold_submits} submits timed, {GOLD_SHARE:.0%} of items gold")
    asyncio.run(go())
    if not timed:
        raise SystemExit(f"gold: nothing timed; errors {dict(run.errors)}")
    gold = [ms for is_gold, ms in timed if is_gold]
    other = [ms for is_gold, ms in timed if not is_gold]
    med_gold, med_other = statistics.median(gold), statistics.median(other)
    ratio = max(med_gold, med_other) / min(med_gold, med_other)
    p = float(mannwhitneyu(gold, other, alternative="two-sided").pvalue)
    t = TARGETS["gold"]
    targets = {"median_ratio": {"max": t["median_ratio_max"], "pass": ratio <= t["median_ratio_max"]},
               "mann_whitney_p": {"min": t["mann_whitney_p_min"], "pass": p > t["mann_whitney_p_min"]}}
    return {"mode": "gold", "annotators": n, "submits": len(timed), "gold_submits": len(gold),
            "gold_submit_median_ms": _round(med_gold), "other_submit_median_ms": _round(med_other),
            "gold_submit_p90_ms": _round(_percentile(gold, 0.9)), "other_submit_p90_ms": _round(_percentile(other, 0.9)),
            "median_ratio": round(ratio, 3), "mann_whitney_p": round(p, 4), "errors": dict(run.errors),
            "targets": targets, "pass": all(v["pass"] for v in targets.values())}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


# --- verification ------------------------------------------------------------------------

def verify(db_url: str, study: dict, run: Run) -> dict:
    import psycopg

    with psycopg.connect(db_url) as conn:
        stored_ids = {str(r[0]) for r in conn.execute(
            "SELECT j.client_id FROM annotate_judgment j JOIN annotate_studyitem i ON i.id = j.item_id "
            "WHERE i.study_id = %s", [study["id"]])}
        stored = conn.execute(
            "SELECT count(*) FROM annotate_judgment j JOIN annotate_studyitem i ON i.id = j.item_id "
            "WHERE i.study_id = %s", [study["id"]]).fetchone()[0]
        dup_item = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM annotate_judgment GROUP BY item_id, annotator_id "
            "HAVING count(*) > 1) d").fetchone()[0]
        dup_client = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM annotate_judgment GROUP BY annotator_id, client_id "
            "HAVING count(*) > 1) d").fetchone()[0]
        over, mismatch, full = conn.execute(
            """SELECT count(*) FILTER (WHERE i.judgment_count > s.redundancy
                                           OR coalesce(c.n, 0) > s.redundancy),
                      count(*) FILTER (WHERE i.judgment_count <> coalesce(c.n, 0)),
                      count(*) FILTER (WHERE coalesce(c.n, 0) = s.redundancy)
               FROM annotate_studyitem i JOIN annotate_study s ON s.id = i.study_id
               LEFT JOIN (SELECT item_id, count(*) AS n FROM annotate_judgment GROUP BY item_id) c
                      ON c.item_id = i.id
               WHERE i.study_id = %s""", [study["id"]]).fetchone()
        # taken = judgments + unsettled leases: the queue's slot count, kept by every write.
        taken_mismatch = conn.execute(
            """SELECT count(*) FROM annotate_studyitem i WHERE i.study_id = %s AND i.taken <> i.judgment_count
                   + (SELECT count(*) FROM annotate_assignment a WHERE a.item_id = i.id AND a.state = 'active')""",
            [study["id"]]).fetchone()[0]
        over_leased = conn.execute(
            """SELECT count(*) FROM annotate_studyitem i JOIN annotate_study s ON s.id = i.study_id
               WHERE i.study_id = %s AND i.judgment_count + (
                   SELECT count(*) FROM annotate_assignment a
                   WHERE a.item_id = i.id AND a.state = 'active' AND a.expires_at > now()) > s.redundancy""",
            [study["id"]]).fetchone()[0]
    return {
        "stored": stored,
        "acknowledged": len(run.acked),
        "lost": len(run.acked - stored_ids),
        # Stored without an acknowledgement, other than submits whose answer was lost in transport.
        "unacknowledged_stored": len(stored_ids - run.acked - run.uncertain),
        "uncertain_submits": len(run.uncertain),
        "duplicated": dup_item + dup_client,
        "duplicated_item_annotator": dup_item,
        "duplicated_client_id": dup_client,
        "over_redundancy": over,
        "over_redundancy_with_leases": over_leased,
        "judgment_count_mismatch": mismatch,
        "taken_mismatch": taken_mismatch,
        "items_complete": full,
    }


# --- main --------------------------------------------------------------------------------

def run_mode(args, mode: str, data: dict, gunicorn_pid: int, db_url: str) -> dict:
    n = args.annotators or DEFAULT_ANNOTATORS[mode]
    study = data["studies"][mode]
    log(f"{mode}: {n} annotators, {args.warmup:g} s warm-up, {args.seconds:g} s measured")
    res = asyncio.run(drive(args, mode, study, data["tokens"], n, gunicorn_pid, db_url))
    run: Run = res.pop("run")
    checks = verify(db_url, study, run)
    res.pop("window")
    out = {
        "mode": mode, "annotators": n, "seconds": args.seconds,
        "workers": args.workers, "worker_class": args.worker_class,
        **({"threads": args.threads} if args.worker_class == "gthread" else {}),
        **res,
        "responses_201": run.created, "responses_200_repeat": run.repeats, "done_responses": run.done,
        "errors": dict(sorted(run.errors.items())),
        **checks,
    }
    targets = {}
    t = TARGETS[mode]
    if "judgments_per_s_min" in t:
        targets["judgments_per_s"] = {"min": t["judgments_per_s_min"],
                                      "pass": out["judgments_per_s"] >= t["judgments_per_s_min"]}
    if "server_cpu_ms_per_judgment_max" in t:
        v, limit = out["server_cpu_ms_per_judgment"], t["server_cpu_ms_per_judgment_max"]
        targets["server_cpu_ms_per_judgment"] = {"max": limit, "pass": v is not None and v <= limit}
    if "rt_p99_ms_max" in t:
        v = out["rt_p99_ms"]
        targets["rt_p99_ms"] = {"max": t["rt_p99_ms_max"], "pass": v is not None and v <= t["rt_p99_ms_max"]}
    integrity = (checks["lost"] == 0 and checks["unacknowledged_stored"] == 0 and checks["duplicated"] == 0
                 and checks["over_redundancy"] == 0 and checks["judgment_count_mismatch"] == 0
                 and checks["taken_mismatch"] == 0
                 and len(run.acked) <= checks["stored"] <= len(run.acked) + len(run.uncertain))
    targets["integrity"] = {"pass": integrity}
    out["targets"] = targets
    out["pass"] = all(v["pass"] for v in targets.values())
    if run.done:
        log(f"WARNING: {run.done} annotators ran out of items; raise --items")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["saturation", "realistic", "both", "gold"], default="both")
    p.add_argument("--gold-submits", type=int, default=400, help="gold mode: submits timed (default 400)")
    p.add_argument("--seconds", type=float, default=60, help="measured seconds per mode (default 60)")
    p.add_argument("--warmup", type=float, default=5, help="unmeasured seconds before each mode (default 5)")
    p.add_argument("--annotators", type=int, default=None,
                   help="annotators for every mode (default: 50 saturation, 100 realistic)")
    p.add_argument("--pause", type=float, default=1.0, help="realistic mode's pause per item, seconds")
    p.add_argument("--items", type=int, default=20_000, help="items per study (default 20000)")
    # gthread 2 x 4 was the best of sync 2/3/4 and gthread 2x4/3x2/3x4 on 2 cores (it keeps
    # connections alive, which sync workers do not); the differences were within the noise.
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--worker-class", choices=["sync", "gthread"], default="gthread",
                   help="gunicorn worker class (default gthread)")
    p.add_argument("--threads", type=int, default=4, help="threads per gthread worker (default 4)")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB_URL),
                   help=f"the bench database, created and dropped by this script (default {DEFAULT_DB_URL})")
    p.add_argument("--keep", action="store_true", help="keep the database afterwards")
    p.add_argument("--src", default=str(ROOT),
                   help="project tree to benchmark (default: this checkout), run with this checkout's venv")
    p.add_argument("--_build-data", dest="build_data", help=argparse.SUPPRESS)
    p.add_argument("--_users", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_items", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_modes", help=argparse.SUPPRESS)
    args = p.parse_args()
    global SRC
    SRC = Path(args.src).resolve()
    if not (SRC / "manage.py").exists():
        raise SystemExit(f"{SRC} has no manage.py")

    if args.build_data:
        build_data(args._users, args._items, args._modes.split(","), args.build_data)
        return 0

    Path(DATA_DIR).mkdir(parents=True, exist_ok=True)
    modes = ["saturation", "realistic"] if args.mode == "both" else [args.mode]
    n_users = max(args.annotators or DEFAULT_ANNOTATORS[m] for m in modes)
    data = prepare(args.database_url, n_users, args.items, modes)
    proc = None
    ok = True
    try:
        proc = gunicorn_start(args, args.database_url)
        for mode in modes:
            result = (run_gold(args, data) if mode == "gold" else
                      run_mode(args, mode, data, proc.pid, args.database_url))
            ok &= result["pass"]
            print(json.dumps(result), flush=True)
    finally:
        if proc is not None:
            gunicorn_stop(proc)
        if not args.keep:
            db_drop(args.database_url)
            log(f"database {_dbname(args.database_url)} dropped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
