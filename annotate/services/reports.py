"""Study reports: the statistics of a study's judgments (workers.stats) as one plain dict,
rendered as a self-contained HTML page (inline SVG, no network), CSV or JSON, and stored as
a Report's file. Large studies are built by a Celery task (``report_request``); the
``export_report`` command builds one in place."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone as dj_timezone

from annotate.media import random_report_name
from annotate.models import Judgment, Report, Study
from annotate.services.enqueue import enqueue_after_commit
from workers.stats.agreement import agreement_report, rating_matrix
from workers.stats.pairwise import A_WINS, B_WINS, MIN_CLUSTERS, TIE, json_ready, pairwise_report, wilson_interval

DEFAULT_ROUNDS = 1000
# The SPEC's floor for the bootstrap intervals of a report anyone reads.
MIN_ROUNDS = 1000
MAX_ROUNDS = 100_000


def rounds_check(rounds: int) -> int:
    """Bootstrap rounds for a report: between MIN_ROUNDS and MAX_ROUNDS (fewer make the interval
    ends wobble from seed to seed)."""
    if not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
        raise ReportError(f"rounds: must be between {MIN_ROUNDS:,} and {MAX_ROUNDS:,}, not {rounds}")
    return rounds
DEFAULT_SEED = 0


class ReportError(Exception):
    pass


def _judgments(study: Study):
    """All of the study's judgments with what the statistics need, and the exclusion counts."""
    rows = list(Judgment.objects.filter(item__study=study).order_by("pk").values_list(
        "item_id", "item__is_gold", "is_flagged", "annotator_id", "choice", "score", "a_on_left",
        "item__prompt_id", "item__prompt__category", "item__image_a__checkpoint__name",
        "item__image_b__checkpoint__name", "gold_correct", "annotator__username"))
    counted = [r for r in rows if not r[1] and not r[2]]
    excluded = {"flagged_annotators": sum(1 for r in rows if r[2]),
                "gold_items": sum(1 for r in rows if r[1] and not r[2])}
    return rows, counted, excluded


def _gold(rows) -> list[dict]:
    """Per annotator (by username, as on the dashboard and in the exports): answers on gold
    items, correct ones, and whether their judgments are excluded (flagged by the gold check)."""
    per: dict = {}
    flagged = {r[12] for r in rows if r[2]}
    for r in rows:
        if r[1] and r[11] is not None:
            n, ok = per.get(r[12], (0, 0))
            per[r[12]] = (n + 1, ok + int(bool(r[11])))
    return [{"annotator": a, "gold_answers": n, "gold_correct": ok, "accuracy": ok / n, "excluded": a in flagged}
            for a, (n, ok) in sorted(per.items())]


def _answer(row) -> str:
    """The answer in the item's own terms: a / b / tie, or aligned / not_aligned."""
    choice, score, a_on_left = row[4], row[5], row[6]
    if choice == "tie":
        return "tie"
    if choice in ("left", "right"):
        return "a" if (choice == "left") == a_on_left else "b"
    if choice == "score":
        return "aligned" if score >= 4 else "not_aligned" if score <= 2 else "unsure"
    return choice


def _agreement(counted) -> dict:
    if not counted:
        return {}
    matrix = rating_matrix([r[0] for r in counted], [r[12] for r in counted], [_answer(r) for r in counted])
    return agreement_report(matrix).to_dict()


def _pairwise(study: Study, counted, rounds: int, seed: int) -> dict:
    names = sorted({r[9] or "imported" for r in counted} | {r[10] or "imported" for r in counted})
    index = {n: k for k, n in enumerate(names)}
    model_a = np.array([index[r[9] or "imported"] for r in counted], dtype=np.int64)
    model_b = np.array([index[r[10] or "imported"] for r in counted], dtype=np.int64)
    outcome = np.array([{"a": A_WINS, "b": B_WINS, "tie": TIE}[_answer(r)] for r in counted], dtype=np.int64)
    prompt = np.array([r[7] for r in counted], dtype=np.int64)
    annotator = np.array([r[3] for r in counted], dtype=np.int64)
    a_on_left = np.array([bool(r[6]) for r in counted])
    out = pairwise_report(names, model_a, model_b, outcome, prompt, annotator, a_on_left, rounds=rounds,
                          seed=seed)
    categories = []
    category_of = np.array([r[8] or "" for r in counted])
    for category in sorted(set(category_of.tolist())):
        mask = category_of == category
        pairs = []
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                forward = mask & (model_a == i) & (model_b == j)
                backward = mask & (model_a == j) & (model_b == i)
                wins_i = int(((outcome == A_WINS) & forward).sum() + ((outcome == B_WINS) & backward).sum())
                wins_j = int(((outcome == B_WINS) & forward).sum() + ((outcome == A_WINS) & backward).sum())
                ties = int(((outcome == TIE) & (forward | backward)).sum())
                n = wins_i + wins_j + ties
                if n:
                    low, high = wilson_interval(np.array([wins_i + ties / 2]), np.array([n]))
                    pairs.append({"a": names[i], "b": names[j], "n": n, "wins_a": wins_i, "wins_b": wins_j,
                                  "ties": ties, "win_rate_a": (wins_i + ties / 2) / n,
                                  "wilson": [float(low[0]), float(high[0])]})
        categories.append({"category": category or "(none)", "pairs": pairs})
    out["categories"] = categories
    return out


def _rating(counted, rounds: int, seed: int) -> dict:
    """Per checkpoint: the share of its images judged aligned, with a Wilson and a prompt
    bootstrap interval; per pair of checkpoints, the difference with its interval and verdict
    (workers.stats.rating). On the 1-5 scale a 3 is neither: left out, and counted as such."""
    from workers.stats.rating import rating_report

    neutral: dict = {}
    kept = []
    for r in counted:
        name = r[9] or "imported"
        answer = _answer(r)
        if answer == "unsure":
            neutral[name] = neutral.get(name, 0) + 1
        else:
            kept.append((name, answer == "aligned", r[7]))
    names = sorted({name for name, _, _ in kept} | set(neutral))
    index = {name: k for k, name in enumerate(names)}
    out = rating_report(names, [index[x[0]] for x in kept], [x[1] for x in kept], [x[2] for x in kept],
                        rounds=rounds, seed=seed)
    for row in out["checkpoints"]:
        row["neutral_left_out"] = neutral.get(row["model"], 0)
    out["neutral_left_out"] = sum(neutral.values())
    return out


def _warnings(study: Study, counted, data: dict) -> list[str]:
    """What a reader must know before trusting the figures: an open study, judgments missing
    against the target, items with fewer counted judgments than the redundancy, few prompts
    or annotators behind a pair or a checkpoint, Likert 3s left out."""
    notes = []
    if study.status != Study.Status.CLOSED:
        notes.append(f"The study is {study.status}: the figures will change as judgments come in.")
    items = list(study.items.filter(is_gold=False).values_list("pk", flat=True))
    per_item = Counter(r[0] for r in counted)
    short = sum(1 for pk in items if per_item.get(pk, 0) < study.redundancy)
    if short:
        notes.append(f"{short} of {len(items)} items have fewer than {study.redundancy} counted judgments "
                     f"(not yet judged, or judgments of flagged annotators excluded).")
    pairwise = data.get("pairwise")
    if pairwise:
        few = [p for p in pairwise["pairs"] if p["n"] and (p["prompts"] or 0) < MIN_CLUSTERS]
        if few:
            notes.append(f"{len(few)} pair{'s' if len(few) > 1 else ''} rest on fewer than {MIN_CLUSTERS} prompts: "
                         "no prompt-bootstrap interval or verdict for them; read the Wilson interval with care "
                         "(it treats every vote as independent).")
        if (pairwise["inputs"].get("annotators") or 0) < MIN_CLUSTERS:
            notes.append(f"Fewer than {MIN_CLUSTERS} annotators: no annotator-bootstrap interval.")
    rating = data.get("rating")
    if rating:
        few = [c for c in rating["checkpoints"] if c["n"] and c["prompts"] < MIN_CLUSTERS]
        if few:
            notes.append(f"{len(few)} checkpoint{'s' if len(few) > 1 else ''} rest on fewer than {MIN_CLUSTERS} "
                         "prompts: no prompt-bootstrap interval or verdict for them; read the Wilson interval "
                         "with care (it treats every answer as independent).")
    if rating and rating["neutral_left_out"]:
        notes.append(f"{rating['neutral_left_out']} answers of 3 (neither) on the 1-5 scale are left out "
                     "of the aligned rates.")
    return notes


def study_report_data(*, study: Study, rounds: int = DEFAULT_ROUNDS, seed: int = DEFAULT_SEED) -> dict:
    """Everything a report shows, with its inputs stated: study, judgments counted and
    excluded (judgments of flagged annotators; answers on gold items), bootstrap rounds, seed."""
    if rounds < 1:
        raise ReportError(f"rounds: must be at least 1, not {rounds}")
    rows, counted, excluded = _judgments(study)
    data = {
        "study": {"name": study.name, "public_id": str(study.public_id), "kind": study.kind,
                  "status": study.status, "redundancy": study.redundancy, "items": study.items.count(),
                  # What it takes to reproduce the figures: the prompts and the exact weights.
                  "dataset": study.dataset.name if study.dataset_id else None,
                  "checkpoints": [{"name": c.name, "backend": c.backend, "fingerprint": c.fingerprint}
                                  for c in study.checkpoints.order_by("name")]},
        "inputs": {"judgments": len(rows), "judgments_counted": len(counted), "excluded": excluded,
                   "bootstrap_rounds": rounds, "seed": seed,
                   "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "agreement": _agreement(counted),
        "gold_accuracy": _gold(rows),
    }
    if study.kind == Study.Kind.PAIRWISE:
        data["pairwise"] = _pairwise(study, counted, rounds, seed) if counted else None
    else:
        data["rating"] = _rating(counted, rounds, seed)
    data = json_ready(data)
    data["warnings"] = _warnings(study, counted, data)
    return data


def report_render(data: dict, fmt: str) -> bytes:
    from annotate.services.report_render import render_csv, render_html, render_json

    renderers = {Report.Format.HTML: render_html, Report.Format.CSV: render_csv, Report.Format.JSON: render_json}
    if fmt not in renderers:
        raise ReportError(f"format: must be one of {', '.join(renderers)}, not {fmt!r}")
    return renderers[fmt](data).encode()


@transaction.atomic
def report_request(*, study: Study, fmt: str, rounds: int = DEFAULT_ROUNDS, seed: int = DEFAULT_SEED,
                   created_by=None, enqueue: bool = True) -> Report:
    if fmt not in Report.Format.values:
        raise ReportError(f"format: must be one of {', '.join(Report.Format.values)}, not {fmt!r}")
    rounds_check(rounds)
    if not 0 <= seed < 2**32:  # numpy's seeds; the API's bounds
        raise ReportError(f"seed: must be from 0 to 2^32 - 1, not {seed}")
    report = Report.objects.create(study=study, format=fmt, params={"rounds": rounds, "seed": seed},
                                   created_by=created_by)
    if enqueue:
        from workers.tasks import report_build

        # A broker that is down leaves the report queued for requeue_jobs (annotate.services.enqueue).
        enqueue_after_commit(report_build, report.id)
    return report


def report_build(report_id: int) -> Report:
    """Compute and store a report's file; a failure is recorded on the report and raised."""
    report = Report.objects.select_related("study").get(pk=report_id)
    Report.objects.filter(pk=report.pk).update(status=Report.Status.RUNNING, error="")
    try:
        data = study_report_data(study=report.study, rounds=int(report.params.get("rounds", DEFAULT_ROUNDS)),
                                 seed=int(report.params.get("seed", DEFAULT_SEED)))
        content = report_render(data, report.format)
        # reports/<random>: nothing of the study's in the name; only the download view serves it.
        report.file.save(random_report_name(report.format), ContentFile(content), save=False)
    except Exception as exc:
        Report.objects.filter(pk=report.pk).update(status=Report.Status.FAILED, error=f"{type(exc).__name__}: {exc}",
                                                   finished_at=dj_timezone.now())
        raise
    Report.objects.filter(pk=report.pk).update(status=Report.Status.SUCCEEDED, file=report.file.name,
                                               finished_at=dj_timezone.now())
    report.refresh_from_db()
    return report
