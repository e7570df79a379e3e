"""A study report's data (annotate.services.reports) as JSON, CSV or one self-contained HTML
page: the plots are inline SVG made here, the styles inline; nothing is fetched.

The CSV is for programs: a missing value is an empty cell, counts are integers, p-values keep
their digits (5.3e-08). The HTML is for people: a missing value says "n/a", a p-value below
0.0001 prints as "<0.0001", a verdict or a rating that the data cannot give is said in words."""
from __future__ import annotations

import io
import json
from html import escape

from django.template.loader import render_to_string

from annotate import csv_safe
from workers.stats.pairwise import ELO_ANCHOR, MIN_CLUSTERS

DEFAULT_CONFIDENCE = 0.95  # a report without figures yet (no judgments counted)
NA = "n/a"


def render_json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def _confidence(data: dict) -> float:
    figures = data.get("pairwise") or data.get("rating")
    return figures["inputs"]["confidence"] if figures else DEFAULT_CONFIDENCE


# ---------------------------------------------------------------------------------------- CSV
# Numbers formatted here are NumberText, which the writer leaves as they are: "-0.2500" stays a
# number in a spreadsheet, while study, checkpoint and annotator names are neutralised.
def _cell(value, digits: int = 4) -> str:
    return "" if value is None else csv_safe.number_text(value, f".{digits}f")


def _cell_count(value) -> str:
    return "" if value is None else csv_safe.number_text(value, ".0f")


def _cell_p(value) -> str:
    return "" if value is None else csv_safe.number_text(value, ".6g")  # 5.3e-08, not 0.000000


def _cells(bounds, digits: int = 4) -> list[str]:
    return [_cell(x, digits) for x in (bounds or (None, None))]


def _block(w, header: list[str], rows) -> None:
    w.writerow([])
    w.writerow(header)
    w.writerows(rows)


def _csv_inputs(w, data: dict) -> None:
    inputs = data["inputs"]
    w.writerow(["study", "kind", "judgments", "judgments_counted", "excluded_flagged", "excluded_gold",
                "bootstrap_rounds", "seed", "confidence", "generated_at"])
    w.writerow([data["study"]["name"], data["study"]["kind"], inputs["judgments"], inputs["judgments_counted"],
                inputs["excluded"]["flagged_annotators"], inputs["excluded"]["gold_items"],
                inputs["bootstrap_rounds"], inputs["seed"], _confidence(data), inputs["generated_at"]])


def _csv_pairs(w, pairwise: dict) -> None:
    def row(p):
        counts = (p["n"], p["prompts"], p["annotators"], p["wins_a"], p["wins_b"], p["ties"])
        ps = (p["bootstrap_p"], p["bootstrap_holm_p"], p["sign_test_p"], p["holm_p"])
        return [p["a"], p["b"], p["verdict"], *map(_cell_count, counts), _cell(p["win_rate_a"]),
                *_cells(p["wilson"]), *_cells(p["bootstrap_prompt"]), *_cells(p["bootstrap_annotator"]),
                _cell(p["win_odds"]), *_cells(p["win_odds_bootstrap_prompt"]), *map(_cell_p, ps)]

    _block(w, ["a", "b", "verdict", "n", "prompts", "annotators", "wins_a", "wins_b", "ties", "win_rate_a",
               "wilson_low", "wilson_high", "prompt_bootstrap_low", "prompt_bootstrap_high",
               "annotator_bootstrap_low", "annotator_bootstrap_high", "win_odds", "win_odds_prompt_bootstrap_low",
               "win_odds_prompt_bootstrap_high", "bootstrap_p", "bootstrap_holm_p", "sign_test_p",
               "sign_test_holm_p"], map(row, pairwise["pairs"]))


def _csv_ratings(w, pairwise: dict) -> None:
    def row(r):
        # A separated or unidentified checkpoint has no measured Elo: its status says why.
        measured = r["status"] == "ok"
        elo = [_cell(r["elo"], 1), *_cells(r["elo_ci_prompt"], 1), *_cells(r["elo_ci_vote"], 1)]
        return [r["model"], r["status"], *(elo if measured else [""] * len(elo)), _cell_count(r["rank"]),
                *map(_cell_count, r["rank_interval_prompt"] or (None, None))]

    _block(w, ["model", "status", "elo", "elo_prompt_low", "elo_prompt_high", "elo_vote_low", "elo_vote_high",
               "rank", "rank_low", "rank_high"], map(row, pairwise["bradley_terry"]["ratings"]))


def _csv_pairwise(w, pairwise: dict) -> None:
    _csv_pairs(w, pairwise)
    _csv_ratings(w, pairwise)
    _block(w, ["category", "a", "b", "n", "win_rate_a", "wilson_low", "wilson_high"],
           ([c["category"], p["a"], p["b"], _cell_count(p["n"]), _cell(p["win_rate_a"]), *_cells(p["wilson"])]
            for c in pairwise["categories"] for p in c["pairs"]))
    bias = pairwise["position_bias"]
    if bias:
        _block(w, ["left_wins", "right_wins", "ties", "left_win_rate", "wilson_low", "wilson_high", "sign_test_p"],
               [[*map(_cell_count, (bias["left_wins"], bias["right_wins"], bias["ties"])),
                 _cell(bias["left_win_rate"]), *_cells(bias["wilson"]), _cell_p(bias["sign_test_p"])]])


def _csv_rating(w, rating: dict) -> None:
    _block(w, ["model", "n", "aligned", "neutral_left_out", "prompts", "aligned_rate", "wilson_low", "wilson_high",
               "prompt_bootstrap_low", "prompt_bootstrap_high"],
           ([r["model"], *map(_cell_count, (r["n"], r["aligned"], r["neutral_left_out"], r["prompts"])),
             _cell(r["aligned_rate"]), *_cells(r["wilson"]), *_cells(r["bootstrap_prompt"])]
            for r in rating["checkpoints"]))
    _block(w, ["a", "b", "verdict", "shared_prompts", "difference", "prompt_bootstrap_low", "prompt_bootstrap_high",
               "bootstrap_p", "bootstrap_holm_p"],
           ([p["a"], p["b"], p["verdict"], _cell_count(p["shared_prompts"]), _cell(p["difference"]),
             *_cells(p["bootstrap_prompt"]), _cell_p(p["bootstrap_p"]), _cell_p(p["bootstrap_holm_p"])]
            for p in rating["pairs"]))


def _csv_agreement(w, agreement: dict) -> None:
    _block(w, ["coefficient", "value", "n_items", "note"],
           ([key, _cell(agreement[key]["value"]), _cell_count(agreement[key]["n_items"]),
             agreement[key]["reason"] or ""] for key in ("fleiss_kappa", "krippendorff_alpha_nominal")))
    _block(w, ["annotator_a", "annotator_b", "cohen_kappa", "n_items", "note"],
           ([c["a"], c["b"], _cell(c["value"]), _cell_count(c["n_items"]), c["reason"] or ""]
            for c in agreement["cohen_kappa"]))
    _block(w, ["annotator", "n_rated", "n_compared", "n_agree", "n_ties", "agree_rate"],
           ([x["annotator"], *map(_cell_count, (x["n_rated"], x["n_compared"], x["n_agree"], x["n_ties"])),
             _cell(x["rate"])] for x in agreement["loo_majority"]))


def render_csv(data: dict) -> str:
    """Blocks separated by a blank line, each with its own header: inputs, warnings, pairs
    (with the verdict), ratings, per-category pairs, position bias (pairwise) or checkpoints
    and pairs of checkpoints (rating), agreement coefficients, Cohen's kappa per pair of
    annotators, leave-one-out majority, gold accuracy."""
    out = io.StringIO()
    w = csv_safe.writer(out)
    _csv_inputs(w, data)
    _block(w, ["warning"], ([note] for note in data.get("warnings") or []))
    if data.get("pairwise"):
        _csv_pairwise(w, data["pairwise"])
    if data.get("rating"):
        _csv_rating(w, data["rating"])
    if data.get("agreement"):
        _csv_agreement(w, data["agreement"])
    _block(w, ["annotator", "gold_answers", "gold_correct", "accuracy", "excluded"],
           ([g["annotator"], _cell_count(g["gold_answers"]), _cell_count(g["gold_correct"]), _cell(g["accuracy"]),
             "true" if g.get("excluded") else "false"] for g in data.get("gold_accuracy") or []))
    return out.getvalue()


# -------------------------------------------------------------------------------- HTML text
def _text(value, digits: int = 3) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def _text_count(value) -> str:
    return NA if value is None else f"{value:.0f}"


def _text_p(value) -> str:
    return NA if value is None else "<0.0001" if value < 0.0001 else f"{value:.4f}"


def _text_interval(bounds, digits: int = 3) -> str:
    low, high = bounds or (None, None)
    return NA if low is None or high is None else f"{low:.{digits}f}–{high:.{digits}f}"


def _text_difference_interval(bounds) -> str:
    low, high = bounds or (None, None)
    return NA if low is None or high is None else f"{low:+.3f} to {high:+.3f}"


def _text_ranks(bounds) -> str:
    low, high = bounds or (None, None)
    return NA if low is None or high is None else f"{low:.0f}" if low == high else f"{low:.0f}–{high:.0f}"


def _verdict(pair: dict) -> str:
    words = {"a better": f"{pair['a']} better", "b better": f"{pair['b']} better",
             "too few prompts": "too few prompts to say"}
    return words.get(pair["verdict"], pair["verdict"])


def _standing(rating: dict, anchor_only: bool = False) -> str | None:
    """Words in place of the Elo and its interval where the fit measures none: a separated
    checkpoint is placed a fixed gap beyond the others, an unidentified one not at all, and the
    one checkpoint left between them (``anchor_only``) is the scale's anchor by definition."""
    status = rating["status"]
    if status == "ok" and anchor_only:
        return f"Elo {ELO_ANCHOR:.0f} by definition (the scale's anchor; the others are placed beyond it)"
    if status == "above":
        return "above the main group (never lost to it)" if rating["losses"] else "above all others (never lost)"
    if status == "below":
        return "below all others (never won)" if not rating["wins"] else "below the main group (never beat it)"
    if status == "unidentified":
        return "not placed: its comparisons do not order it against the others"
    if status == "no_comparisons":
        return "never compared"
    return None


def _odds_text(odds, interval) -> str:
    """'1.70 (1.20–2.50)': A's wins per one of B's, with its prompt-bootstrap interval (none is
    infinite here: the report's JSON holds no infinity, so A winning every comparison is n/a)."""
    interval_text = _text_interval(interval, 2)
    return NA if odds is None else f"{odds:.2f}" if interval_text == NA else f"{odds:.2f} ({interval_text})"


def _pair_view(p: dict) -> dict:
    return {"a": p["a"], "b": p["b"], "verdict": _verdict(p),
            **{k: _text_count(p[k]) for k in ("n", "prompts", "annotators", "wins_a", "wins_b", "ties")},
            "win_rate_a": _text(p["win_rate_a"]), "wilson": _text_interval(p["wilson"]),
            "win_odds": _odds_text(p["win_odds"], p["win_odds_bootstrap_prompt"]),
            "bootstrap_prompt": _text_interval(p["bootstrap_prompt"]),
            "bootstrap_annotator": _text_interval(p["bootstrap_annotator"]),
            "bootstrap_p": _text_p(p["bootstrap_p"]), "bootstrap_holm_p": _text_p(p["bootstrap_holm_p"]),
            "sign_test_p": _text_p(p["sign_test_p"]), "holm_p": _text_p(p["holm_p"])}


def _elo_view(r: dict, anchor_only: bool) -> dict:
    return {"model": r["model"], "standing": _standing(r, anchor_only), "elo": _text(r["elo"], 0),
            "interval": _text_interval(r["elo_ci_prompt"], 0), "rank": _text_count(r["rank"]),
            "rank_interval": _text_ranks(r["rank_interval_prompt"])}


def _category_view(c: dict) -> dict:
    return {"category": c["category"],
            "pairs": [{"a": p["a"], "b": p["b"], "n": _text_count(p["n"]), "win_rate_a": _text(p["win_rate_a"]),
                       "wilson": _text_interval(p["wilson"])} for p in c["pairs"]]}


def _bias_view(bias: dict | None) -> dict | None:
    if not bias:
        return None
    return {**{k: _text_count(bias[k]) for k in ("left_wins", "right_wins", "ties")},
            "left_win_rate": _text(bias["left_win_rate"]), "wilson": _text_interval(bias["wilson"]),
            "sign_test_p": _text_p(bias["sign_test_p"])}


def _checkpoint_view(r: dict) -> dict:
    return {"model": r["model"], **{k: _text_count(r[k]) for k in ("n", "aligned", "neutral_left_out",
                                                                     "prompts")},
            "aligned_rate": _text(r["aligned_rate"]), "wilson": _text_interval(r["wilson"]),
            "bootstrap_prompt": _text_interval(r["bootstrap_prompt"])}


def _difference_view(p: dict) -> dict:
    return {"a": p["a"], "b": p["b"], "verdict": _verdict(p), "shared_prompts": _text_count(p["shared_prompts"]),
            "difference": NA if p["difference"] is None else f"{p['difference']:+.3f}",
            "bootstrap_prompt": _text_difference_interval(p["bootstrap_prompt"]),
            "bootstrap_p": _text_p(p["bootstrap_p"]), "bootstrap_holm_p": _text_p(p["bootstrap_holm_p"])}


def _coefficient_text(c: dict) -> str:
    return "undefined" if c["value"] is None else f"{c['value']:.3f}"


def _agreement_view(agreement: dict) -> dict | None:
    if not agreement:
        return None
    names = {"fleiss_kappa": "Fleiss' kappa", "krippendorff_alpha_nominal": "Krippendorff's alpha (nominal)"}
    return {
        "coefficients": [{"name": name, "value": _coefficient_text(agreement[key]),
                          "items": _text_count(agreement[key]["n_items"]), "note": agreement[key]["reason"] or ""}
                         for key, name in names.items()],
        "cohen": [{"a": c["a"], "b": c["b"], "value": _coefficient_text(c), "items": _text_count(c["n_items"]),
                   "note": c["reason"] or ""} for c in agreement["cohen_kappa"]],
        "loo": [{"annotator": x["annotator"], "rate": _text(x["rate"]),
                 **{k: _text_count(x[k]) for k in ("n_rated", "n_compared", "n_agree", "n_ties")}}
                for x in agreement["loo_majority"]],
    }


def _gold_view(g: dict) -> dict:
    return {"annotator": g["annotator"], "answers": _text_count(g["gold_answers"]),
            "correct": _text_count(g["gold_correct"]), "accuracy": _text(g["accuracy"]),
            "excluded": "excluded: flagged by the gold check" if g.get("excluded") else "counted"}


# ------------------------------------------------------------------------------------- plots
def _colour(rate: float | None) -> str:
    if rate is None:
        return "#eeeeee"
    # 0 -> red, 0.5 -> white, 1 -> blue (colour-blind safe enough with the printed value)
    t = max(0.0, min(1.0, rate))
    if t >= 0.5:
        k = (t - 0.5) * 2
        return f"rgb({int(255 - 190 * k)},{int(255 - 130 * k)},255)"
    k = (0.5 - t) * 2
    return f"rgb(255,{int(255 - 150 * k)},{int(255 - 150 * k)})"


def win_rate_matrix_svg(models: list[str], matrix: list[list]) -> str:
    """Row model's win rate against the column model (ties one half)."""
    cell, left, top = 64, 160, 120
    size_w, size_h = left + cell * len(models) + 90, top + cell * len(models) + 10
    summary = "; ".join(f"{a} against {b}: {_text(matrix[i][j], 2)}" for i, a in enumerate(models)
                        for j, b in enumerate(models) if i != j)
    label = f"Win-rate matrix, the row checkpoint against the column checkpoint. {summary}"
    parts = [f'<svg role="img" width="{size_w}" height="{size_h}" aria-label="{escape(label)}">']
    for j, name in enumerate(models):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x}" y="{top - 8}" transform="rotate(-40 {x} {top - 8})" font-size="12">'
                     f'{escape(name)}</text>')
    for i, name in enumerate(models):
        y = top + i * cell
        parts.append(f'<text x="{left - 8}" y="{y + cell / 2 + 4}" text-anchor="end" font-size="12">{escape(name)}</text>')
        for j in range(len(models)):
            rate = matrix[i][j] if i != j else None
            x = left + j * cell
            parts.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{_colour(rate)}"/>')
            value = "" if i == j else _text(rate, 2)
            parts.append(f'<text x="{x + cell / 2 - 1}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                         f'font-size="13">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _point_summary(name: str, value, bounds, note: str | None, digits: int) -> str:
    if value is None:
        return f"{name}: {note or NA}"
    low, high = bounds
    interval = "" if low is None or high is None else f" ({low:.{digits}f} to {high:.{digits}f})"
    return f"{name}: {value:.{digits}f}{interval}"


def interval_plot_svg(rows: list[dict], *, value: str, interval: str, label: str, axis: str, low=None, high=None,
                      digits: int = 0, reference: float | None = None) -> str:
    """One line per row: its point value and interval, on a shared axis titled ``axis``, with
    an optional dashed reference line. A row without a value prints its "note" (or n/a)."""
    points = [(r["model"], r.get(value), (r.get(interval) or [None, None]), r.get("note")) for r in rows]
    numbers = [v for _, v, ci, _ in points for v in (v, *ci) if v is not None]
    if not numbers:
        return ""
    lo = min(numbers) if low is None else low
    hi = max(numbers) if high is None else high
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    printed = [(note or NA) if v is None else f"{v:.{digits}f}" for _, v, _, note in points]  # right of the axis
    left = 30 + 7 * max(len(str(name)) for name, _, _, _ in points)  # room for the longest label
    width, row_h, top = 420, 28, 20
    scale = lambda v: left + (v - lo) / (hi - lo) * width  # noqa: E731
    axis_y = top + row_h * len(points) + 8
    summary = "; ".join(_point_summary(name, v, ci, note, digits) for name, v, ci, note in points)
    parts = [f'<svg role="img" width="{left + width + 20 + 7 * max(map(len, printed))}" height="{axis_y + 44}" '
             f'aria-label="{escape(f"{label}. {summary}")}">']
    if reference is not None:
        x = scale(reference)
        parts.append(f'<line class="reference" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{axis_y}" '
                     f'stroke="#888" stroke-dasharray="4 3"/>')
    for k, ((name, v, (a, b), _), text) in enumerate(zip(points, printed)):
        y = top + k * row_h + row_h / 2
        parts.append(f'<text x="{left - 10}" y="{y + 4}" text-anchor="end" font-size="12">{escape(name)}</text>')
        if a is not None and b is not None:
            parts.append(f'<line x1="{scale(a):.1f}" x2="{scale(b):.1f}" y1="{y}" y2="{y}" stroke="#1f4e99" '
                         f'stroke-width="3"/>')
        if v is not None:
            parts.append(f'<circle cx="{scale(v):.1f}" cy="{y}" r="5" fill="#c0392b"/>')
        parts.append(f'<text x="{left + width + 8}" y="{y + 4}" font-size="12">{escape(text)}</text>')
    parts.append(f'<line x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#555"/>')
    for t in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{scale(t):.1f}" y="{axis_y + 16}" text-anchor="middle" font-size="11">'
                     f'{t:.{digits}f}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{axis_y + 34}" text-anchor="middle" font-size="12">'
                 f'{escape(axis)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _elo_svg(ratings: list[dict], anchor_only: bool, level: str) -> str:
    """Measured ratings on the Elo axis; a separated or unidentified checkpoint in words (its
    placed Elo is a convention, and would stretch the axis by the separation gap)."""
    rows = []
    for r in ratings:
        note = _standing(r, anchor_only)
        rows.append({"model": r["model"], "note": note, "elo": None if note else r["elo"],
                     "elo_ci_prompt": None if note else r["elo_ci_prompt"]})
    return interval_plot_svg(rows, value="elo", interval="elo_ci_prompt", axis="Elo",
                             label=f"Bradley-Terry ratings (Elo scale) with {level} prompt-bootstrap intervals")


def _pairwise_context(pairwise: dict, level: str) -> dict:
    ratings = pairwise["bradley_terry"]["ratings"]
    # One measured checkpoint among separated ones: its Elo is the anchor, nothing was measured.
    anchor_only = len(ratings) > 1 and sum(r["status"] == "ok" for r in ratings) == 1
    return {
        "pairs": [_pair_view(p) for p in pairwise["pairs"]],
        "ratings": [_elo_view(r, anchor_only) for r in ratings],
        "categories": [_category_view(c) for c in pairwise["categories"]],
        "bias": _bias_view(pairwise["position_bias"]),
        "matrix_svg": win_rate_matrix_svg(pairwise["inputs"]["models"], pairwise["win_rate_matrix"]),
        "ratings_svg": _elo_svg(ratings, anchor_only, level),
        "categories_svg": interval_plot_svg(
            [{"model": f"{c['category']}: {p['a']} vs {p['b']}", "win_rate_a": p["win_rate_a"],
              "wilson": p["wilson"]} for c in pairwise["categories"] for p in c["pairs"]],
            value="win_rate_a", interval="wilson", axis="win rate of A", reference=0.5, low=0.0, high=1.0,
            digits=2, label=f"Win rate of A over B per category, {level} Wilson intervals"),
    }


def _aligned_rate_svg(checkpoints: list[dict], level: str) -> str:
    """The prompt-bootstrap intervals where every checkpoint has one (enough prompts), else the
    Wilson intervals: one kind of interval per plot."""
    bootstrap = all(r["bootstrap_prompt"][0] is not None for r in checkpoints if r["n"])
    interval, name = ("bootstrap_prompt", "prompt-bootstrap") if bootstrap else ("wilson", "Wilson")
    return interval_plot_svg(checkpoints, value="aligned_rate", interval=interval, axis="aligned rate",
                             reference=0.5, low=0.0, high=1.0, digits=2,
                             label=f"Share judged aligned, {level} {name} intervals")


def _rating_context(rating: dict, level: str) -> dict:
    return {"checkpoints": [_checkpoint_view(r) for r in rating["checkpoints"]],
            "pairs": [_difference_view(p) for p in rating["pairs"]],
            "neutral_left_out": _text_count(rating["neutral_left_out"]),
            "rating_svg": _aligned_rate_svg(rating["checkpoints"], level)}


def render_html(data: dict) -> str:
    confidence = _confidence(data)
    level = f"{confidence:.0%}"
    context = {"data": data, "level": level, "alpha": f"{1 - confidence:.2g}", "min_clusters": MIN_CLUSTERS,
               "warnings": data.get("warnings") or [],
               "agreement": _agreement_view(data.get("agreement") or {}),
               "gold": [_gold_view(g) for g in data.get("gold_accuracy") or []],
               "pairwise": _pairwise_context(data["pairwise"], level) if data.get("pairwise") else None,
               "rating": _rating_context(data["rating"], level) if data.get("rating") else None}
    return render_to_string("reports/study_report.html", context)
