"""User settings persisted as a small JSON file under the data home (no Streamlit here).

`<home>/settings.json` (override with $LORACLE_SETTINGS) holds e.g. {"default_adapter": "medical-pubmedqa"}.
Writes go to a temp file then `os.replace`, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def settings_path() -> Path:
    if os.environ.get("LORACLE_SETTINGS"):
        return Path(os.environ["LORACLE_SETTINGS"])
    from ingest.config import home

    return home() / "settings.json"


def load_settings(path: Path | None = None) -> dict[str, Any]:
    target = Path(path) if path else settings_path()
    if not target.exists():
        return {}
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(updates: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Merge `updates` into the stored settings; a value of None removes the key."""
    target = Path(path) if path else settings_path()
    data = load_settings(target)
    for key, value in updates.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".settings-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, target)
    return data
