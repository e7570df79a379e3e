#!/usr/bin/env python
"""Benchmark of the researcher's pages with a 100,000-judgment study on PostgreSQL.

A script, not a timed test. It makes its own PostgreSQL database, migrates it, and fills it:
a pairwise study of two checkpoints over 2,000 prompts (16,000 items, redundancy 7, 60
annotators, 100,000 judgments spread over three days, skips, gold items, a built report),
their 32,000 images with raw and TextNorm scores, the TIA2 labels (27,500 images, from
../shared/tia2) with a reward model's raw and TextNorm scores, and 100 generation and
scoring jobs. Then it asks for every researcher page through Django's test client (the view,
its queries and the template; no HTTP server), each page ``--reps`` times after a first,
cold request, and prints one JSON line: per page the cold and warm times, the queries, and
whether it met the target (at most 1 s, cold and warm). A trivial page (/healthz) is timed
alongside as the baseline of the same run. Tasks are not run inline: the reward-models page's
first request finds no report and asks a worker for one, as in production; the worker's part
is then run and timed apart, and the page timed again.

    .venv/bin/python scripts/bench_dashboard.py [--judgments 100000] [--reps 5] [--keep]

Exit status 0 when every page met the target, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import urllib.parse
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/calibra_bench_dashboard"
TIA2 = Path(os.environ.get("TIA2_PATH", ROOT.parent / "shared" / "tia2"))
TARGET_S = 1.0


def log(*args) -> None:
    print(f"[bench_dashboard {time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def db_recreate(url: str) -> None:
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing database name {name!r}")
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def django_setup(db_url: str, data_dir: str) -> None:
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "webapp.settings.local", "DATABASE_URL": db_url, "DEBUG": "0",
        "CALIBRA_DATA_DIR": data_dir, "CELERY_BROKER_URL": "", "CELERY_TASK_ALWAYS_EAGER": "0",
        "SECRET_KEY": "bench-only-" + "x" * 40, "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
        "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost",
    })
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


# --- data ---------------------------------------------------------------------------------

def build(n_judgments: int, seed: int = 0) -> dict:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from annotate.models import (
        Checkpoint, ContrastivePromptSet, Dataset, GenerationJob, Image, Judgment, Prompt, RewardModel,
        RewardScore, ScoringJob, Skip, StudyItem, StudyMembership,
    )
    from annotate.roles import ANNOTATORS
    from annotate.services.accounts import user_create_with_role
    from annotate.roles import RESEARCHERS
    from annotate.services.reports import report_build, report_request
    from annotate.services.studies import study_create_pairwise, study_open

    rng = random.Random(seed)
    t0 = time.perf_counter()
    researcher = user_create_with_role(username="researcher", password="bench-pass-123", role=RESEARCHERS)
    User = get_user_model()
    password = make_password("bench-pass-123")
    people = User.objects.bulk_create([User(username=f"ann{i:02d}", password=password) for i in range(60)])
    group, _ = Group.objects.get_or_create(name=ANNOTATORS)
    group.user_set.add(*people)

    dataset = Dataset.objects.create(name="bench")
    prompts = Prompt.objects.bulk_create([
        Prompt(dataset=dataset, text=f"a photo of {i % 9 + 1} cups and a vase number {i}", source_index=i,
               category=("counting", "composition")[i % 2]) for i in range(2000)])
    ContrastivePromptSet.objects.bulk_create([
        ContrastivePromptSet(prompt=p, source="rule_based", version="rules-bench", texts=[f"{p.text} (other)"])
        for p in prompts])
    checkpoints = [Checkpoint.objects.create(name=n, backend="procedural", fingerprint=n) for n in ("ckpt-a", "ckpt-b")]
    images = Image.objects.bulk_create([
        Image(prompt=p, checkpoint=c, seed=s, index=0, file=f"generated/{c.id}/{p.id}_{s}_0.jpg", sha256="0" * 64,
              size_bytes=1, width=512, height=512, metadata={"matches_prompt": rng.random() < 0.6})
        for p in prompts for c in checkpoints for s in range(8)], batch_size=5000)
    log(f"users, prompts, {len(images)} images: {time.perf_counter() - t0:.1f} s")

    study = study_create_pairwise(name="Bench: a vs b", dataset=dataset, checkpoints=checkpoints, redundancy=7,
                                  gold_share=0.05, created_by=researcher)
    StudyMembership.objects.bulk_create([StudyMembership(study=study, annotator=u) for u in people])
    study_open(study=study)
    items = list(StudyItem.objects.filter(study=study).values_list("id", "is_gold"))
    log(f"study of {len(items)} items: {time.perf_counter() - t0:.1f} s")

    now = timezone.now()
    judgments, per_item = [], {}
    order = items * 7
    rng.shuffle(order)
    for item_id, is_gold in order:
        if len(judgments) >= n_judgments:
            break
        taken = per_item.setdefault(item_id, set())
        annotator = rng.choice(people)
        if annotator.id in taken:
            continue
        taken.add(annotator.id)
        judgments.append(Judgment(
            item_id=item_id, annotator=annotator, client_id=uuid.uuid4(), choice=rng.choice(["left", "right", "tie"]),
            a_on_left=rng.random() < 0.5, time_spent_ms=int(rng.lognormvariate(8.3, 0.5)),
            gold_correct=(rng.random() < 0.85) if is_gold else None,
            created_at=now - timedelta(seconds=rng.uniform(0, 72 * 3600))))
    Judgment.objects.bulk_create(judgments, batch_size=5000)
    # created_at is auto_now_add: spread the judgments over three days after the insert.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE annotate_judgment SET created_at = now() - (random() * interval '72 hours')")
        cursor.execute("""
            UPDATE annotate_studyitem i SET judgment_count = c.n, taken = c.n
            FROM (SELECT item_id, count(*) n FROM annotate_judgment GROUP BY item_id) c WHERE c.item_id = i.id""")
        cursor.execute("""
            UPDATE annotate_studymembership m SET answered_count = c.n, gold_answered = c.g, gold_correct = c.ok
            FROM (SELECT annotator_id, count(*) n, count(gold_correct) g, count(*) FILTER (WHERE gold_correct) ok
                  FROM annotate_judgment GROUP BY annotator_id) c
            WHERE c.annotator_id = m.annotator_id AND m.study_id = %s""", [study.id])
    skipped = rng.sample(items, 2000)
    Skip.objects.bulk_create([Skip(item_id=i, annotator=rng.choice(people), client_id=uuid.uuid4(), reason="unclear")
                              for i, _ in skipped])
    log(f"{len(judgments)} judgments: {time.perf_counter() - t0:.1f} s")

    model = RewardModel.objects.create(name="bench-pickscore", kind="pickscore", location="-", fingerprint="bench")
    set_of = dict(ContrastivePromptSet.objects.filter(prompt__dataset=dataset).values_list("prompt_id", "id"))
    RewardScore.objects.bulk_create(
        [RewardScore(image=i, reward_model=model, variant="raw", value=rng.gauss(0.2, 0.03)) for i in images]
        + [RewardScore(image=i, reward_model=model, variant="textnorm", prompt_set_id=set_of[i.prompt_id],
                       normalize="minmax", value=rng.random()) for i in images], batch_size=5000)
    for k in range(50):
        status = ("succeeded", "failed", "running", "queued")[k % 4]
        GenerationJob.objects.create(checkpoint=checkpoints[k % 2], dataset=dataset, seeds=list(range(8)),
                                     status=status, total_images=16000, done_images=16000 if k % 4 == 0 else 4000,
                                     error="CUDA error: out of memory" if status == "failed" else "")
        ScoringJob.objects.create(reward_model=model, checkpoint=checkpoints[k % 2], variants=["raw", "textnorm"],
                                  prompt_set_source="rule_based", normalize="minmax", status=status,
                                  total_images=16000, done_images=8000)
    log(f"scores and jobs: {time.perf_counter() - t0:.1f} s")

    call_command("import_tia2", str(TIA2), verbosity=0, stdout=open(os.devnull, "w"))
    tia2_images = list(Image.objects.filter(prompt__dataset__source="tia2").values_list("id", "prompt_id"))
    tia2_sets = {}
    for prompt_id in {p for _, p in tia2_images}:
        tia2_sets[prompt_id] = ContrastivePromptSet(prompt_id=prompt_id, source="rule_based", version="rules-bench",
                                                    texts=["other"])
    ContrastivePromptSet.objects.bulk_create(tia2_sets.values(), batch_size=5000)
    RewardScore.objects.bulk_create(
        [RewardScore(image_id=i, reward_model=model, variant="raw", value=rng.gauss(0.2, 0.03)) for i, _ in tia2_images]
        + [RewardScore(image_id=i, reward_model=model, variant="textnorm", prompt_set_id=tia2_sets[p].id,
                       normalize="minmax", value=rng.random()) for i, p in tia2_images], batch_size=5000)
    log(f"TIA2 ({len(tia2_images)} images) with scores: {time.perf_counter() - t0:.1f} s")

    report = report_request(study=study, fmt="html", rounds=200, created_by=researcher)
    report_build(report.id)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # this machine's server runs without autovacuum
    log(f"report built, ANALYZE done: {time.perf_counter() - t0:.1f} s")
    return {"researcher": researcher, "study": study, "checkpoint": checkpoints[0], "report": report,
            "membership": StudyMembership.objects.filter(study=study).first(), "judgment": judgments[0],
            "items": len(items), "judgments": len(judgments), "images": len(images),
            "tia2_images": len(tia2_images)}


# --- timing -------------------------------------------------------------------------------

def pages(data: dict) -> dict[str, str]:
    from django.urls import reverse

    study, checkpoint = data["study"], data["checkpoint"]
    return {
        "baseline /healthz": reverse("healthz"),
        "overview": reverse("home"),
        "study": reverse("study-detail", args=[study.id]),
        "study report preview": reverse("study-report-preview", args=[study.id, data["report"].id]),
        "jobs": reverse("jobs"),
        "jobs API (polled)": reverse("api-generation-jobs"),
        "checkpoint gallery": reverse("checkpoint-gallery", args=[checkpoint.id]),
        "checkpoint gallery, page 80, counting": reverse("checkpoint-gallery", args=[checkpoint.id])
        + "?category=counting&page=80",
        "reward models against humans": reverse("reward-models"),
        "new study": reverse("study-create"),
        "admin: judgments": reverse("admin:annotate_judgment_changelist"),
        "admin: judgments, searched": reverse("admin:annotate_judgment_changelist") + "?q=ann07",
        "admin: study items": reverse("admin:annotate_studyitem_changelist"),
        "admin: images": reverse("admin:annotate_image_changelist"),
        "admin: reward scores": reverse("admin:annotate_rewardscore_changelist"),
        "admin: study": reverse("admin:annotate_study_change", args=[study.id]),
        "admin: memberships": reverse("admin:annotate_studymembership_changelist"),
    }


def time_pages(data: dict, reps: int) -> dict:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotate.selectors_models import tia2_report_compute

    client = Client()
    client.force_login(data["researcher"])
    out = {}
    for name, url in pages(data).items():
        times, queries = [], None
        for k in range(reps + 1):
            if name == "reward models against humans" and k == 1:
                # The first request found no report and asked a worker for one (no worker runs
                # here): the worker's part, timed apart, then the page as it is served after.
                start = time.perf_counter()
                tia2_report_compute()
                out["reward report, built by the worker"] = {"seconds": round(time.perf_counter() - start, 2)}
            with CaptureQueriesContext(connection) as captured:
                start = time.perf_counter()
                response = client.get(url)
                if getattr(response, "streaming", False):
                    b"".join(response.streaming_content)
                times.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise SystemExit(f"{name}: {url} answered {response.status_code}")
            queries = len(captured.captured_queries)
        cold, warm = times[0], times[1:]
        out[name] = {"url": url, "cold_ms": round(cold * 1000, 1), "median_ms": round(statistics.median(warm) * 1000, 1),
                     "max_ms": round(max(warm) * 1000, 1), "queries": queries,
                     "met": max(times) <= TARGET_S}
        log(f"{name}: cold {cold * 1000:.0f} ms, median {statistics.median(warm) * 1000:.0f} ms, {queries} queries")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB_URL))
    p.add_argument("--judgments", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = p.parse_args()
    db_recreate(args.database_url)
    django_setup(args.database_url, "/tmp/bench-dashboard-data")
    data = build(args.judgments)
    results = time_pages(data, args.reps)
    timed = {name: r for name, r in results.items() if "met" in r}
    summary = {
        "study": {"items": data["items"], "judgments": data["judgments"], "images": data["images"],
                  "tia2_images": data["tia2_images"], "annotators": 60},
        "target_s": TARGET_S, "pages": results, "all_met": all(r["met"] for r in timed.values()),
        "slowest_ms": max(max(r["cold_ms"], r["max_ms"]) for r in timed.values()),
    }
    print(json.dumps(summary), flush=True)
    if not args.keep:
        from django.db import connections

        connections.close_all()
        import psycopg

        parts = urllib.parse.urlsplit(args.database_url)
        with psycopg.connect(urllib.parse.urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
    return 0 if summary["all_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
