"""A study report's data (annotate.services.reports) as JSON, CSV or one self-contained HTML
page: the plots are inline SVG made here, the styles inline; nothing is fetched."""
from __future__ import annotations

import csv
import io
import json
from html import escape

from django.template.loader import render_to_string


def render_json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_csv(data: dict) -> str:
    """Blocks separated by a blank line, each with its own header: inputs, pairs, ratings,
    per-category pairs, position bias (pairwise) or checkpoints (rating), agreement."""
    out = io.StringIO()
    w = csv.writer(out)
    inputs = data["inputs"]
    w.writerow(["study", "kind", "judgments", "judgments_counted", "excluded_flagged", "excluded_gold",
                "bootstrap_rounds", "seed", "generated_at"])
    w.writerow([data["study"]["name"], data["study"]["kind"], inputs["judgments"], inputs["judgments_counted"],
                inputs["excluded"]["flagged_annotators"], inputs["excluded"]["gold_items"],
                inputs["bootstrap_rounds"], inputs["seed"], inputs["generated_at"]])
    pairwise = data.get("pairwise")
    if pairwise:
        w.writerow([])
        w.writerow(["a", "b", "n", "wins_a", "wins_b", "ties", "win_rate_a", "wilson_low", "wilson_high",
                    "prompt_bootstrap_low", "prompt_bootstrap_high", "sign_test_p", "holm_p"])
        for p in pairwise["pairs"]:
            w.writerow([p["a"], p["b"], p["n"], p["wins_a"], p["wins_b"], p["ties"], _fmt(p["win_rate_a"], 4),
                        *[_fmt(x, 4) for x in (p["wilson"] or [None, None])],
                        *[_fmt(x, 4) for x in (p.get("bootstrap_prompt") or [None, None])],
                        _fmt(p["sign_test_p"], 6), _fmt(p["holm_p"], 6)])
        w.writerow([])
        w.writerow(["model", "elo", "elo_low", "elo_high", "rank", "rank_low", "rank_high", "status"])
        for r in pairwise["bradley_terry"]["ratings"]:
            w.writerow([r["model"], _fmt(r["elo"], 1), *[_fmt(x, 1) for x in (r.get("elo_ci_prompt") or [None, None])],
                        _fmt(r["rank"], 0), *[_fmt(x, 0) for x in (r.get("rank_interval_prompt") or [None, None])],
                        r["status"]])
        w.writerow([])
        w.writerow(["category", "a", "b", "n", "win_rate_a", "wilson_low", "wilson_high"])
        for c in pairwise["categories"]:
            for p in c["pairs"]:
                w.writerow([c["category"], p["a"], p["b"], p["n"], _fmt(p["win_rate_a"], 4),
                            *[_fmt(x, 4) for x in p["wilson"]]])
        bias = pairwise["position_bias"]
        w.writerow([])
        w.writerow(["left_wins", "right_wins", "ties", "left_win_rate", "wilson_low", "wilson_high", "sign_test_p"])
        w.writerow([bias["left_wins"], bias["right_wins"], bias["ties"], _fmt(bias["left_win_rate"], 4),
                    *[_fmt(x, 4) for x in (bias["wilson"] or [None, None])], _fmt(bias["sign_test_p"], 6)])
    if data.get("rating"):
        w.writerow([])
        w.writerow(["model", "n", "aligned", "aligned_rate", "wilson_low", "wilson_high"])
        for r in data["rating"]["checkpoints"]:
            w.writerow([r["model"], r["n"], r["aligned"], _fmt(r["aligned_rate"], 4),
                        *[_fmt(x, 4) for x in r["wilson"]]])
    agreement = data.get("agreement") or {}
    if agreement:
        w.writerow([])
        w.writerow(["coefficient", "value", "note"])
        for key in ("fleiss_kappa", "krippendorff_alpha_nominal"):
            c = agreement[key]
            w.writerow([key, _fmt(c.get("value"), 4), c.get("reason") or ""])
    return out.getvalue()


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
    parts = [f'<svg role="img" width="{size_w}" height="{size_h}" '
             f'aria-label="Win-rate matrix: the row checkpoint\'s win rate against the column checkpoint">']
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
            label = "" if rate is None else f"{rate:.2f}"
            parts.append(f'<text x="{x + cell / 2 - 1}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                         f'font-size="13">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def interval_plot_svg(rows: list[dict], *, value: str, interval: str, label: str, low=None, high=None,
                      digits: int = 0) -> str:
    """One line per row: its point value and interval, on a shared axis."""
    points = [(r["model"], r.get(value), (r.get(interval) or [None, None])) for r in rows]
    numbers = [v for _, v, ci in points for v in (v, *ci) if v is not None]
    if not numbers:
        return ""
    lo = min(numbers) if low is None else low
    hi = max(numbers) if high is None else high
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    left = 30 + 7 * max(len(str(name)) for name, _, _ in points)  # room for the longest label
    width, row_h, top = 420, 28, 20
    scale = lambda v: left + (v - lo) / (hi - lo) * width  # noqa: E731
    height = top + row_h * len(points) + 36
    parts = [f'<svg role="img" width="{left + width + 60}" height="{height}" '
             f'aria-label="{escape(label)}">']
    for k, (name, v, (a, b)) in enumerate(points):
        y = top + k * row_h + row_h / 2
        parts.append(f'<text x="{left - 10}" y="{y + 4}" text-anchor="end" font-size="12">{escape(name)}</text>')
        if a is not None and b is not None:
            parts.append(f'<line x1="{scale(a):.1f}" x2="{scale(b):.1f}" y1="{y}" y2="{y}" stroke="#1f4e99" '
                         f'stroke-width="3"/>')
        if v is not None:
            parts.append(f'<circle cx="{scale(v):.1f}" cy="{y}" r="5" fill="#c0392b"/>')
            parts.append(f'<text x="{left + width + 8}" y="{y + 4}" font-size="12">{v:.{digits}f}</text>')
    axis_y = top + row_h * len(points) + 8
    parts.append(f'<line x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#555"/>')
    for t in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{scale(t):.1f}" y="{axis_y + 16}" text-anchor="middle" font-size="11">'
                     f'{t:.{digits}f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(data: dict) -> str:
    pairwise = data.get("pairwise")
    context = {"data": data, "pairwise": pairwise, "rating": data.get("rating"),
               "agreement": data.get("agreement") or {}, "gold": data.get("gold_accuracy") or []}
    if pairwise:
        models = pairwise["inputs"]["models"]
        context["matrix_svg"] = win_rate_matrix_svg(models, pairwise["win_rate_matrix"])
        context["categories_svg"] = interval_plot_svg(
            [{"model": f"{c['category']}: {p['a']} vs {p['b']}", "win_rate_a": p["win_rate_a"], "wilson": p["wilson"]}
             for c in pairwise["categories"] for p in c["pairs"]],
            value="win_rate_a", interval="wilson", label="Win rate of A over B per category, Wilson intervals",
            low=0.0, high=1.0, digits=2)
        context["ratings_svg"] = interval_plot_svg(pairwise["bradley_terry"]["ratings"], value="elo",
                                                   interval="elo_ci_prompt", label="Bradley-Terry ratings (Elo scale) "
                                                   "with prompt-bootstrap intervals")
    if data.get("rating"):
        context["rating_svg"] = interval_plot_svg(data["rating"]["checkpoints"], value="aligned_rate",
                                                  interval="wilson", label="Share judged aligned, Wilson intervals",
                                                  low=0.0, high=1.0, digits=2)
    return render_to_string("reports/study_report.html", context)
