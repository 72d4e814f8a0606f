"""The token pair `agentryctl login` saves: $XDG_CONFIG_HOME/agentry/credentials.json (else
~/.config/agentry/credentials.json), mode 0600, one entry per server URL."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "agentry" / "credentials.json"


def _load_all() -> dict[str, Any]:
    try:
        data = json.loads(path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(url: str) -> dict[str, Any] | None:
    entry = _load_all().get(url)
    return entry if isinstance(entry, dict) else None


def _write_all(data: dict[str, Any]) -> None:
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(target.name + ".tmp")
    # Created 0600 before a byte is written: the tokens are never readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)


def save(url: str, entry: dict[str, Any]) -> None:
    data = _load_all()
    data[url] = {**data.get(url, {}), **entry}
    _write_all(data)


def forget(url: str) -> dict[str, Any] | None:
    data = _load_all()
    entry = data.pop(url, None)
    if entry is not None:
        _write_all(data)
    return entry
