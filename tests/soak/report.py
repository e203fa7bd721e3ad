"""The soak's figures and defects as a compact table, one row per seed."""

from __future__ import annotations

from tests.soak.runner import SoakResult

FIGURES = [
    ("deliveries", "deliveries"),
    ("deliv/s", "deliveries/s"),
    ("ack p50", "ack p50 ms"),
    ("ack p99", "ack p99 ms"),
    ("drain s", "drain s"),
    ("wh->api p50", "webhook->Codat p50 s"),
    ("wh->api p99", "webhook->Codat p99 s"),
]


def _cell(value: float | int | None, seconds: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.2f}" if seconds or value < 100 else f"{value:,.0f}"


def table(results: list[SoakResult]) -> str:
    if not results:
        return ""
    defect_names = list(results[0].defects)
    header = ["seed", "conns", *(short for short, _ in FIGURES), *defect_names]
    rows = [header]
    for result in results:
        figures = [_cell(result.info["deliveries"])] + [_cell(result.figures[key]) for _, key in FIGURES[1:]]
        rows.append(
            [
                str(result.config.seed),
                str(result.config.connections),
                *figures,
                *(str(result.defects[name]) for name in defect_names),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def details(result: SoakResult) -> str:
    config = result.config
    faults = (
        [f"Codat faults {config.fault_rate:.0%}"]
        + (["worker SIGKILL"] if config.kill_worker else [])
        + ([f"Valkey down {config.redis_down_seconds:g}s"] if config.restart_redis else [])
    )
    out = [
        f"seed {config.seed}: {'clean' if result.clean else 'DEFECTS'} ({', '.join(faults)}); logs in "
        f"{result.work_dir}",
        "  " + ", ".join(f"{name} {value:,}" for name, value in result.info.items()),
    ]
    out += [f"  crashed: {crash}" for crash in result.crashes]
    out += [f"  {name}: {', '.join(ids)}" for name, ids in result.examples.items()]
    out += [f"  log: {sample}" for sample in result.log_samples[:5]]
    return "\n".join(out)
