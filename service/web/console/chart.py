"""The overview's last-hour chart, drawn on the server as SVG geometry: jobs a minute as stacked
bars (done, deferred, dead-lettered), deliveries a minute as a line. The template only places
what is computed here, so the page needs no script and no style attribute (CSP)."""

from __future__ import annotations

from typing import Any

from service.core.clock import iso

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22
GROUPS = ("done", "deferred", "dead_lettered")


def group_of(outcome: str) -> str:
    return outcome if outcome in ("deferred", "dead_lettered") else "done"


def _nice_ceiling(value: int) -> int:
    for ceiling in (5, 10, 20, 50, 100, 200, 500):
        if value <= ceiling:
            return ceiling
    magnitude = 10 ** (len(str(value)) - 1)
    return -(-value // magnitude) * magnitude


def draw(series: list[dict[str, Any]]) -> dict[str, Any]:
    minutes = len(series) or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / minutes
    jobs = [{g: 0 for g in GROUPS} for _ in series]
    for counts, minute in zip(jobs, series, strict=True):
        for outcome, n in minute["outcomes"].items():
            counts[group_of(outcome)] += n
    peak = max([sum(c.values()) for c in jobs] + [m["deliveries"] for m in series] + [1])
    top = _nice_ceiling(peak)
    scale = plot_h / top
    bars, points = [], []
    for index, (minute, counts) in enumerate(zip(series, jobs, strict=True)):
        x = LEFT + index * slot
        y = TOP + plot_h
        for group in GROUPS:
            if counts[group]:
                h = counts[group] * scale
                y -= h
                bars.append(
                    {
                        "x": round(x + slot * 0.1, 1),
                        "y": round(y, 1),
                        "w": round(slot * 0.8, 1),
                        "h": round(h, 1),
                        "group": group,
                        "title": f"{iso(minute['minute'])}: {counts[group]} {group.replace('_', '-')}",
                    }
                )
        points.append(f"{round(x + slot / 2, 1)},{round(TOP + plot_h - minute['deliveries'] * scale, 1)}")
    totals = {g: sum(c[g] for c in jobs) for g in GROUPS}
    outcomes: dict[str, int] = {}
    for minute in series:
        for outcome, n in minute["outcomes"].items():
            outcomes[outcome] = outcomes.get(outcome, 0) + n
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "bottom": TOP + plot_h,
        "mid": round(TOP + plot_h / 2, 1),
        "max": top,
        "half": top / 2 if top % 2 else top // 2,
        "bars": bars,
        "line": " ".join(points),
        "deliveries": sum(m["deliveries"] for m in series),
        "totals": totals,
        "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
        "minutes": len(series),
        "label_y": HEIGHT - 6,
    }
