"""Charts as inline SVG strings, drawn on the server: pages need no script and fetch
nothing. Labels are escaped; every chart has a text alternative (aria-label) and prints its
values, so colour is never the only carrier. (The report's own plots are in
annotate.services.report_render and may be reused from there.)"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = ("#1f4e99", "#d9822b", "#2e7d32", "#8e24aa", "#c62828", "#00838f")


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def bar_chart_svg(labels: Sequence[str], values: Sequence[float | None], *, label: str, digits: int = 0,
                  max_value: float | None = None, width: int = 420, colour: str = PALETTE[0]) -> str:
    """Horizontal bars, one per label, with the value printed at the end of each."""
    if not labels:
        return ""
    top = max([v for v in values if v is not None] + [max_value or 0, 1e-12])
    left = 24 + 7 * max(len(str(name)) for name in labels)
    row_h, pad = 24, 8
    height = pad * 2 + row_h * len(labels)
    parts = [f'<svg role="img" width="{left + width + 70}" height="{height}" aria-label="{escape(label)}">']
    for k, (name, value) in enumerate(zip(labels, values, strict=True)):
        y = pad + k * row_h
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" font-size="12">{escape(str(name))}</text>')
        length = 0 if value is None else max(0.0, value) / top * width
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{length:.1f}" height="{row_h - 8}" fill="{colour}"/>')
        parts.append(f'<text x="{left + length + 6:.1f}" y="{y + 16}" font-size="12">{_fmt(value, digits)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def column_chart_svg(labels: Sequence[str], values: Sequence[float], *, label: str, height: int = 140,
                     column: int = 14, every: int = 1, colour: str = PALETTE[0]) -> str:
    """Vertical columns over time (judgments per hour, say); every ``every``-th label shown."""
    if not labels:
        return ""
    top = max(max(values), 1e-12)
    left, bottom = 40, 28
    width = left + column * len(labels) + 10
    parts = [f'<svg role="img" width="{width}" height="{height + bottom}" aria-label="{escape(label)}">']
    parts.append(f'<text x="{left - 6}" y="12" text-anchor="end" font-size="11">{top:g}</text>')
    parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{height}" y2="{height}" stroke="#555"/>')
    for k, (name, value) in enumerate(zip(labels, values, strict=True)):
        h = value / top * (height - 16)
        x = left + k * column
        parts.append(f'<rect x="{x + 1}" y="{height - h:.1f}" width="{column - 2}" height="{h:.1f}" fill="{colour}">'
                     f'<title>{escape(str(name))}: {value:g}</title></rect>')
        if k % every == 0:
            parts.append(f'<text x="{x + column / 2}" y="{height + 16}" text-anchor="middle" font-size="10">'
                         f'{escape(str(name))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def grouped_bars_svg(groups: Sequence[str], series: dict[str, Sequence[float | None]], *, label: str,
                     digits: int = 3, max_value: float = 1.0, width: int = 360) -> str:
    """For each group (a category, say) one bar per series (raw, TextNorm, ...), with a legend."""
    if not groups or not series:
        return ""
    names = list(series)
    left = 24 + 7 * max(len(str(g)) for g in groups)
    bar_h, gap = 14, 10
    group_h = bar_h * len(names) + gap
    legend_h = 20
    height = legend_h + group_h * len(groups) + 8
    parts = [f'<svg role="img" width="{left + width + 70}" height="{height}" aria-label="{escape(label)}">']
    for s, name in enumerate(names):
        x = left + s * 150
        parts.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{PALETTE[s % len(PALETTE)]}"/>'
                     f'<text x="{x + 16}" y="14" font-size="12">{escape(name)}</text>')
    for g, group in enumerate(groups):
        y0 = legend_h + g * group_h
        parts.append(f'<text x="{left - 8}" y="{y0 + group_h / 2 + 2}" text-anchor="end" font-size="12">'
                     f'{escape(str(group))}</text>')
        for s, name in enumerate(names):
            value = series[name][g]
            y = y0 + s * bar_h
            length = 0 if value is None else max(0.0, value) / max_value * width
            parts.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar_h - 2}" '
                         f'fill="{PALETTE[s % len(PALETTE)]}"/>')
            parts.append(f'<text x="{left + length + 6:.1f}" y="{y + bar_h - 3}" font-size="11">'
                         f'{_fmt(value, digits)}</text>')
    parts.append("</svg>")
    return "".join(parts)
