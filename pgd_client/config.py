"""Where ``pgd login`` keeps the API's URL and the token: one JSON file, mode 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def config_path() -> Path:
    """``$PGD_CONFIG``, else ``$XDG_CONFIG_HOME/pgd/client.json`` (``~/.config/...``)."""
    if os.environ.get("PGD_CONFIG"):
        return Path(os.environ["PGD_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pgd" / "client.json"


def load_config() -> dict[str, Any]:
    """The saved settings, or {} when there are none (or they are unreadable)."""
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(url: str, token: str) -> Path:
    """Write the file readable by its owner only (created 0600, never widened)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(f".{path.name}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": url, "token": token}, out)
    os.chmod(partial, 0o600)
    partial.replace(path)
    return path
