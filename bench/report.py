"""Plain-text tables and the DESIGN.md target checks, from the results dictionary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

CONST = "A: FastAPI constant"
DB = "B: FastAPI + asyncpg PK read"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1) -> str:
    """Columns sized to content; the first `left` columns left-aligned, the rest right."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i < left else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def http_table(http: dict[str, Any]) -> str:
    rows = http.get("rows", {})
    const = rows.get(CONST, {}).get("rps")
    db = rows.get(DB, {}).get("rps")
    lines = []
    for name, r in rows.items():
        x_const, x_db = ratio(r["rps"], const), ratio(r["rps"], db)
        lines.append(
            [
                name,
                r["rps"],
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                r.get("server_cpu_ms_per_req"),
                f"{x_const:.2f}×" if x_const is not None else None,
                f"{x_db:.2f}×" if x_db is not None else None,
            ]
        )
    return table(
        ["route", "req/s", "p50 ms", "p99 ms", "errors", "cpu ms/req", "vs A", "vs B"], lines
    )


# --- targets ---------------------------------------------------------------------------


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each DESIGN.md figure: measured value, threshold, met (None when not measured)."""
    rows = _get(results, "http", "rows") or {}

    def rps(name: str) -> float | None:
        return _get(rows, name, "rps")

    def rl_cost() -> float | None:
        return _get(results, "http", "rate_limit_cost", "median")

    checks: list[tuple[str, Callable[[], float | None], str, float, str]] = [
        ("GET agent vs framework ceiling (A)", lambda: ratio(rps("GET agent"), rps(CONST)), ">=", 0.25, "×"),
        ("GET agent vs database ceiling (B)", lambda: ratio(rps("GET agent"), rps(DB)), ">=", 0.5, "×"),
        ("GET agent p99 at 32 clients", lambda: _get(rows, "GET agent", "p99_ms"), "<=", 25, " ms"),
        ("rate limiting's cost on GET agent (median pair)", rl_cost, "<=", 0.10, ""),
        ("spawn vs framework ceiling (A)", lambda: ratio(rps("POST spawn agent"), rps(CONST)), ">=", 0.1, "×"),
        ("submit vs framework ceiling (A)", lambda: ratio(rps("POST submit run"), rps(CONST)), ">=", 0.1, "×"),
        ("runs/s, one worker draining a backlog (aim 288)", lambda: _get(results, "pipeline", "drain", "runs_per_s"), ">=", 200, "/s"),
        ("runs/s end to end, worker running (aim 288)", lambda: _get(results, "pipeline", "e2e", "runs_per_s"), ">=", 200, "/s"),
        ("submit→running p50, idle (aim 20)", lambda: _get(results, "pipeline", "pickup", "p50_ms"), "<=", 25, " ms"),
        ("tool-outputs→running p50, idle (as submit→running)", lambda: _get(results, "tools", "resume", "p50_ms"), "<=", 25, " ms"),
        ("1 s runs: share of ideal throughput", lambda: _get(results, "pipeline", "slow", "share_of_ideal"), ">=", 0.9, ""),
        ("1 s runs: peak concurrency (aim 180 of 200)", lambda: _get(results, "pipeline", "slow", "peak_concurrency"), ">=", 180, ""),
        (f"metrics p50 with {_largest(results, 'runs') or 0:,} runs, 1 client", lambda: _largest(results, "c1", "p50_ms"), "<=", 15, " ms"),
    ]  # fmt: skip
    out = []
    for name, measure, op, threshold, unit in checks:
        value = measure()
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append(
            {
                "target": name,
                "value": value,
                "op": op,
                "threshold": threshold,
                "unit": unit,
                "met": met,
            }
        )
    return out


def _largest(results: dict[str, Any], *path: str) -> Any:
    """A figure of the largest metrics size measured."""
    sizes = _get(results, "metrics", "sizes") or []
    return _get(sizes[-1], *path) if sizes else None


def targets_table(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    checks = targets(results)
    lines = []
    for c in checks:
        value = c["value"]
        shown = (
            None
            if value is None
            else (f"{value:.1%}" if c["unit"] == "" and value < 1.5 else f"{value:.2f}{c['unit']}")
        )
        limit = (
            f"{c['op']} {c['threshold']:.0%}"
            if c["unit"] == "" and c["threshold"] < 1.5
            else f"{c['op']} {c['threshold']}{c['unit']}"
        )
        verdict = "not measured" if c["met"] is None else ("met" if c["met"] else "MISSED")
        lines.append([c["target"], shown, limit, verdict])
    return table(["target (DESIGN.md)", "measured", "needed", ""], lines, left=1), checks
