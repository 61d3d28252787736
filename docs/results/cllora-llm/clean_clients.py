"""Does quality imbalance hurt the clean clients' own training, or only the global model?

An arm that degrades some clients' responses (``data.degrade.share`` below 1) leaves the others'
rows as they were: its partition is ``iid``'s, seeded alike, so in the same seed a clean client
holds the same rows, and the same own test split, as that client of ``iid``. On those splits the
two arms' models compare row for row: the clean clients' own last-round models (local training
in a federation half of whose clients send damaged updates) and the final global model, each
against ``iid``'s, per client, nested in the seeds. The degraded clients' splits are degraded
too, so for them only the gain of their own model over the global one on the same split is
read.

Computed from the kept cells alone, so a clone re-derives it; from the repository root:

    python docs/results/cllora-llm/clean_clients.py > docs/results/cllora-llm/clean_clients.md
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from fedlora.config import DegradeConfig
from fedlora.data.degrade import chosen_clients
from fedlora.results.run_summary import LocalClient
from fedlora.results.store import read_summary
from fedlora.studies.paired import nested_difference

CELLS = Path(__file__).parent / "cells" / "instruct"
BASELINE = "iid"


def _cell(arm: str, seed: int) -> tuple[dict, dict[str, LocalClient]]:
    """A kept cell's config and its clients' local entries."""
    folder = CELLS / arm / f"seed{seed}"
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    local = read_summary(folder).local
    if local is None:
        raise SystemExit(f"{folder}: no local section in its summary")
    return config, local.clients


def _seeds(arm: str) -> list[int]:
    """The seeds both ``arm`` and the baseline have kept."""

    def kept(name: str) -> set[int]:
        return {int(p.name.removeprefix("seed")) for p in (CELLS / name).glob("seed*")}

    return sorted(kept(arm) & kept(BASELINE))


def main() -> None:
    lines = [
        "Clean clients of a partly degraded arm against the same clients of `iid` (same seed,"
        " same rows, same own test split), in response loss; degraded clients: their own model"
        " less the global model on their own (degraded) split. Written by `clean_clients.py`"
        " from the kept cells.",
        "",
        "| arm | seeds | clients (clean / degraded) | Δ own model vs iid, clean splits"
        " | Δ global model vs iid, clean splits | own − global, clean | own − global, degraded |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for folder in sorted(p for p in CELLS.iterdir() if p.is_dir()):
        arm, seeds = folder.name, _seeds(folder.name)
        degrade = _cell(arm, seeds[0])[0]["data"].get("degrade") if seeds else None
        if not degrade or degrade["share"] >= 1:
            continue
        own: tuple[list[list[float]], list[list[float]]] = ([], [])
        global_: tuple[list[list[float]], list[list[float]]] = ([], [])
        gains: dict[str, list[float]] = {"clean": [], "degraded": []}
        counts = []
        for seed in seeds:
            config, clients = _cell(arm, seed)
            base_config, base = _cell(BASELINE, seed)
            if config["data"]["partition"] != base_config["data"]["partition"]:
                raise SystemExit(f"{arm}, seed {seed}: its partition is not {BASELINE}'s")
            degraded = chosen_clients(len(clients), DegradeConfig(**degrade), seed)
            clean = [c for c in clients if int(c) not in degraded]
            if any(clients[c].examples != base[c].examples for c in clean):
                raise SystemExit(f"{arm}, seed {seed}: a clean client's split is not {BASELINE}'s")
            for side, key in ((own, "own"), (global_, "global_own")):
                side[0].append([getattr(base[c], key) for c in clean])
                side[1].append([getattr(clients[c], key) for c in clean])
            for name, chosen in (("clean", clean), ("degraded", [str(c) for c in degraded])):
                found = [clients[c].own_gain for c in chosen]
                gains[name] += [g for g in found if g is not None]
            counts.append(f"{len(clean)}/{len(degraded)}")
        lines.append(
            f"| {arm} | {len(seeds)} | {', '.join(counts)}"
            f" | {nested_difference(*own)} | {nested_difference(*global_)}"
            f" | {statistics.fmean(gains['clean']):+.3f}"
            f" | {statistics.fmean(gains['degraded']):+.3f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
