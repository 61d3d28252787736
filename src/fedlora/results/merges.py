"""A run's per-merge diagnostics (merge error, client spread, energy above each client rank,
the shadow merges' errors), as its ``merge`` events carry them.

A study keeps no event log beside its table (too large, and most of it is not read), so it
keeps these alone, as ``merges.json`` (:data:`MERGES_FILE`): the per-merge figures of the
HLoRA mechanism tables are then recomputed from a clone as its tables are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedlora.results.events import read_events
from fedlora.results.store import EVENTS_FILE, damaged, read_json

MERGES_FILE = "merges.json"


def merge_diagnostics(folder: Path) -> list[dict[str, Any]]:
    """The run's merges that carry diagnostics, each as ``{"step": version, **diagnostics}``:
    from its event log, else from the kept ``merges.json``; none where it has neither (runs
    written before merges carried diagnostics)."""
    events, kept = folder / EVENTS_FILE, folder / MERGES_FILE
    if events.is_file():
        try:
            logged = read_events(events)
        except json.JSONDecodeError as error:
            raise damaged(events, f"a line that is not JSON ({error.msg})") from None
        return [
            {"step": e["version"], **e["diagnostics"]}
            for e in logged
            if e["type"] == "merge" and "diagnostics" in e
        ]
    if kept.is_file():
        merges = read_json(kept)
        if not isinstance(merges, list):
            raise damaged(kept, "not a JSON list")
        return merges
    return []


def kept_merges(folder: Path) -> bytes | None:
    """A finished run folder's merge diagnostics as the study keeps them, or None where it has
    none. Floats keep their shortest exact form, so a figure read back is the same figure."""
    merges = merge_diagnostics(folder)
    return json.dumps(merges).encode("utf-8") + b"\n" if merges else None
