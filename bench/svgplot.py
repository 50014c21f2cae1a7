"""A line chart as a standalone SVG file, without a plotting library (the bench writes its
figures under docs/img and a reader's browser or GitHub draws them)."""
from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round-numbered ticks covering lo..hi."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2) if first + i * step <= hi + step / 2]


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
               width: int = 900, height: int = 420, marks: list[tuple[float, str]] | None = None) -> str:
    """An SVG document: one polyline per series (name -> [(x, y)]; a None y breaks the line),
    ``marks`` as labelled vertical lines (e.g. restarts)."""
    left, right, top, bottom = 70, 190, 40, 50
    pts = [(x, y) for s in series.values() for x, y in s if y is not None]
    x_lo, x_hi = (min(p[0] for p in pts), max(p[0] for p in pts)) if pts else (0.0, 1.0)
    y_lo, y_hi = 0.0, (max(p[1] for p in pts) * 1.1 if pts else 1.0)
    xt, yt = _ticks(x_lo, x_hi), _ticks(y_lo, y_hi)
    x_lo, x_hi, y_hi = min(x_lo, xt[0]), max(x_hi, xt[-1]), max(y_hi, yt[-1])
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y_lo) / ((y_hi - y_lo) or 1) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15">{escape(title)}</text>']
    for y in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    for x in xt:
        out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#333"/>')
        out.append(f'<text x="{sx(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{x:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">{escape(y_label)}</text>')
    for x, label in marks or []:
        out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#999" '
                   f'stroke-dasharray="4 3"><title>{escape(label)}</title></line>')
    for i, (name, data) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        run: list[str] = []
        runs = []
        for x, y in data:
            if y is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{sx(x):.1f},{sy(y):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(r)}"/>')
        ly = top + 14 + 18 * i
        out.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 32}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{left + pw + 38}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
