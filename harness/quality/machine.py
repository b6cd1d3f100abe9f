"""Where and when a quality record was made: the fields that a trained model's record and an
lm-eval score's record share besides the measurement itself."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from harness.bench import machine_info
from harness.sweep import provenance


def machine(device: str) -> dict[str, Any]:
    """Where a record was made: CPU, GPU, cores, memory, torch, package version and git
    revision."""
    info = machine_info(device)
    return {"cpu": info["cpu"], "gpu": info["gpu"], "cores": info["cores"],
            "ram_bytes": info["ram_bytes"], "torch": info["torch"], **provenance()}


def now() -> str:
    """The time a record is made, in UTC to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
