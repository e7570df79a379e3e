#!/usr/bin/env python
"""Benchmark of the streaming judgment export: 1,000,000 judgments from PostgreSQL to CSV.

A script, not a timed test. It makes its own PostgreSQL database, migrates it (in a
subprocess), inserts a synthetic pairwise study with raw SQL (10 checkpoints, 2,000 prompts,
200 annotators, 10,000 items = 2,000 prompts x 5 checkpoint pairs, 100 judgments per item,
each with its answered lease), then exports it as CSV to /dev/null:

- in this process, through ``annotate.services.exports.judgments_export_chunks`` (the
  generator the API and the command use), sampling the resident memory at 10 %, 50 % and 100 %
  of the rows and the peak (``ru_maxrss``) before and after;
- through ``manage.py export_judgments`` in a subprocess (its peak RSS from ``wait4``)
  unless --no-command.

Target: the CSV export of 1,000,000 judgments in at most 20 s at constant memory. It prints one
JSON line and drops the database (unless --keep).

    .venv/bin/python scripts/bench_export.py [--judgments 1000000] [--database-url URL]

Exit status 0 when the target is met (time, and RSS not growing by more than 50 MiB), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/calibra_bench_export"
TARGET_S = 20.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[bench_export] {msg}", file=sys.stderr, flush=True)


# The bench database's life, as in the annotation bench (this folder is on sys.path when run).
from bench_annotation import _dbname, db_drop, db_recreate  # noqa: E402


def django_env(db_url: str, data_dir: str) -> dict:
    env = dict(os.environ)
    env.update({"DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": "webapp.settings.local", "DEBUG": "0",
                "SECRET_KEY": "bench-only-" + "x" * 40, "LOG_LEVEL": "WARNING", "CALIBRA_DATA_DIR": data_dir,
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)})
    env.pop("CELERY_BROKER_URL", None)
    return env


def insert_data(url: str, judgments: int, prompts: int = 2000, checkpoints: int = 10, users: int = 200) -> dict:
    """The synthetic study with set-based SQL; ids are explicit (the database is thrown away)."""
    import psycopg

    pairs = checkpoints // 2
    items = prompts * pairs
    per_item = -(-judgments // items)
    if per_item > users:
        raise SystemExit(f"{judgments} judgments need more than {users} annotators per item")
    sql = f"""
    INSERT INTO auth_user (id, password, is_superuser, username, first_name, last_name, email, is_staff,
                           is_active, date_joined)
      SELECT u, '!', false, 'annotator' || u, '', '', '', false, true, now() FROM generate_series(1, {users}) u;
    INSERT INTO annotate_dataset (id, name, source, category, description, created_at)
      VALUES (1, 'bench', 'custom', '', '', now());
    INSERT INTO annotate_prompt (id, text, category, source_index, metadata, dataset_id)
      SELECT p, 'a photo of ' || p || ' cups, one "red" on a table', 'counting', p, '{{}}', 1
      FROM generate_series(1, {prompts}) p;
    INSERT INTO annotate_checkpoint (id, name, backend, location, base_model, config, fingerprint, description,
                                     created_at)
      SELECT c, 'ckpt-' || c, 'procedural', '', '', '{{}}', '', '', now() FROM generate_series(1, {checkpoints}) c;
    INSERT INTO annotate_image (id, seed, index, source_name, file, sha256, size_bytes, metadata, created_at,
                                checkpoint_id, prompt_id)
      SELECT (p - 1) * {checkpoints} + c, 0, 0, '', 'generated/' || c || '/' || p || '.jpg', repeat('0', 64), 1,
             '{{}}', now(), c, p
      FROM generate_series(1, {prompts}) p, generate_series(1, {checkpoints}) c;
    INSERT INTO annotate_study (id, public_id, name, kind, status, instructions, question, rating_scale,
                                redundancy, gold_share, gold_min_accuracy, gold_min_answers, lease_seconds,
                                item_order, completion_code, item_count, created_at, opened_at, dataset_id)
      VALUES (1, gen_random_uuid(), 'bench-export', 'pairwise', 'open', '', 'Which?', 'binary', {per_item},
              0, 0.7, 5, 600, 'closest', '', {items}, now(), now(), 1);
    INSERT INTO annotate_studymembership (id, external_worker_id, external_session_id, is_paused, paused_reason,
                                          gold_answered, gold_correct, answered_count, skipped_count, joined_at,
                                          annotator_id, study_id)
      SELECT u, '', '', false, '', 0, 0, 0, 0, now(), u, 1 FROM generate_series(1, {users}) u;
    -- item k (0-based): prompt k / {pairs} + 1, checkpoints 2j+1 and 2j+2 with j = k % {pairs}
    INSERT INTO annotate_studyitem (id, public_id, is_gold, gold_answer, judgment_count, rank, image_a_id,
                                    image_b_id, prompt_id, study_id, taken)
      SELECT k + 1, gen_random_uuid(), false, '', 0, (k * 7919) % 1000003,
             (k / {pairs}) * {checkpoints} + 2 * (k % {pairs}) + 1,
             (k / {pairs}) * {checkpoints} + 2 * (k % {pairs}) + 2, k / {pairs} + 1, 1, 0
      FROM generate_series(0, {items - 1}) k;
    -- judgment i (0-based): item i % {items}, annotator i / {items}: one per (item, annotator)
    INSERT INTO annotate_assignment (id, state, a_on_left, leased_at, expires_at, annotator_id, item_id)
      SELECT i + 1, 'answered', i % 2 = 0, now() - interval '1 day' + i * interval '10 ms',
             now() - interval '1 day' + i * interval '10 ms' + interval '600 s', i / {items} + 1, i % {items} + 1
      FROM generate_series(0, {judgments - 1}) i;
    INSERT INTO annotate_judgment (id, client_id, created_at, choice, score, reason, a_on_left, time_spent_ms,
                                   gold_correct, is_flagged, flag_reason, annotator_id, assignment_id, item_id)
      SELECT i + 1, gen_random_uuid(), now() - interval '1 day' + i * interval '10 ms' + interval '5 s',
             (ARRAY['left', 'right', 'tie'])[i % 3 + 1], NULL, '', i % 2 = 0, 500 + i % 5000, NULL,
             i % 97 = 0, '', i / {items} + 1, i + 1, i % {items} + 1
      FROM generate_series(0, {judgments - 1}) i;
    UPDATE annotate_studyitem si SET judgment_count = c.n, taken = c.n
      FROM (SELECT item_id, count(*) n FROM annotate_judgment GROUP BY item_id) c WHERE c.item_id = si.id;
    UPDATE annotate_studymembership m SET answered_count = c.n
      FROM (SELECT annotator_id, count(*) n FROM annotate_judgment GROUP BY annotator_id) c
      WHERE c.annotator_id = m.annotator_id;
    """
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(sql)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        public_id = conn.execute("SELECT public_id FROM annotate_study WHERE id = 1").fetchone()[0]
        count = conn.execute("SELECT count(*) FROM annotate_judgment").fetchone()[0]
    return {"public_id": str(public_id), "judgments": count, "items": items}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export_in_process(public_id: str, total: int) -> dict:
    import django

    django.setup()
    from annotate.models import Study
    from annotate.services import exports

    study = Study.objects.get(public_id=public_id)
    marks = {"10%": total // 10, "50%": total // 2, "100%": total}
    samples = {}
    before_rss, before_peak = rss_mib(), maxrss_mib()
    rows = -1  # the header line
    t0 = time.perf_counter()
    first_byte = None
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for piece in exports.judgments_export_chunks(study=study, fmt="csv"):
            sink.write(piece)
            rows += piece.count("\n")  # the bench's prompt texts have no line breaks
            if first_byte is None and rows > 0:
                first_byte = time.perf_counter() - t0
            for name, at in marks.items():
                if name not in samples and rows >= at:
                    samples[name] = round(rss_mib(), 1)
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "first_rows_after_s": round(first_byte or 0.0, 3),
            "rss_mib_before": round(before_rss, 1), "rss_mib_at": samples,
            "peak_rss_mib_before": round(before_peak, 1), "peak_rss_mib_after": round(maxrss_mib(), 1)}


def export_by_command(public_id: str, env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([PYTHON, "manage.py", "export_judgments", public_id, "--format", "csv", "--out",
                             os.devnull], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"export_judgments failed: {proc.stderr.read().decode()}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB_URL))
    p.add_argument("--judgments", type=int, default=1_000_000)
    p.add_argument("--no-command", action="store_true", help="skip the export through manage.py")
    p.add_argument("--keep", action="store_true", help="keep the database")
    args = p.parse_args()
    url = args.database_url
    data_dir = tempfile.mkdtemp(prefix="calibra-bench-export-")
    env = django_env(url, data_dir)
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    db_recreate(url)
    try:
        t0 = time.monotonic()
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        log(f"database {_dbname(url)} created and migrated in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        data = insert_data(url, args.judgments)
        insert_s = time.monotonic() - t0
        log(f"{data['judgments']} judgments on {data['items']} items inserted in {insert_s:.1f} s")
        result = {"bench": "judgment_export_csv", "database": "postgresql", "insert_s": round(insert_s, 1),
                  **export_in_process(data["public_id"], data["judgments"])}
        if not args.no_command:
            result["command"] = export_by_command(data["public_id"], env)
        grew = max(result["rss_mib_at"].values()) - result["rss_mib_at"].get("10%", result["rss_mib_before"])
        result.update({"rss_growth_10_to_100_mib": round(grew, 1), "target_s": TARGET_S})
        result["ok"] = (result["rows"] == data["judgments"] and result["seconds"] <= TARGET_S and grew <= 50
                        and result.get("command", {}).get("seconds", 0) <= TARGET_S + 5)
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] else 1
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            db_drop(url)


if __name__ == "__main__":
    sys.exit(main())
