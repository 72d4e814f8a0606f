"""The style's grep test, raw SQL included: which backend files write a table's `status`."""

from __future__ import annotations

import re
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[2] / "backend"


def status_writers(table: str, model: str) -> list[str]:
    """Files (relative to backend/) that write `<table>.status`: raw SQL (UPDATE <table> …
    SET … status =), SQLAlchemy (update(<Model>) … status=), or an attribute assignment."""
    raw = re.compile(
        rf"UPDATE\s+{table}\b(?:(?!WHERE)[^;])*?\bSET\b(?:(?!WHERE)[^;])*?(?<![.\w])status\s*=",
        re.IGNORECASE | re.DOTALL,
    )
    orm = re.compile(rf"update\(({model}|{table})\b[^)]*\)[^;]{{0,400}}?\bstatus\s*=", re.DOTALL)
    attribute = re.compile(
        rf"^\s*[\w.]*{model.lower()}\w*\.status\s*=(?!=)", re.MULTILINE | re.IGNORECASE
    )
    return sorted(
        str(path.relative_to(BACKEND))
        for path in BACKEND.rglob("*.py")
        if any(p.search(path.read_text()) for p in (raw, orm, attribute))
    )
