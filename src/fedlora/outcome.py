"""What a run knows once it ends (or at a checkpoint): plain data the results writer turns
into files, whatever runtime drove the run.

The server core fills it in and ``results/`` writes it out; it lives below both so that
neither package imports the other.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from fedlora.adapters import AdapterState
from fedlora.aggregation.diagnostics import MergeDiagnostics

# The clock a runtime keeps: the simulators' virtual seconds (the cost model's), or a
# deployment's wall seconds. A run's files name their times by it: a deployment's have no
# virtual time, rather than wall seconds under a virtual name.
Clock = Literal["virtual", "wall"]


@dataclass
class Evaluation:
    step: int
    round: int
    time: float
    wall: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class LocalEvaluation:
    """One client's trained model: ``started_from`` is the global version it trained from."""

    client: int
    started_from: int
    time: float
    own: dict[str, float]
    dev: dict[str, float]


@dataclass
class Outcome:
    """The global adapter, the evaluations and every counter ``summary.json`` reports."""

    global_state: AdapterState
    evaluations: list[Evaluation] = field(default_factory=list)
    stop_reason: str = "no work left"
    steps: int = 0
    rounds: int = 0
    virtual_time: float = 0.0
    wall_time: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    accepted: int = 0
    rejected: int = 0
    clipped: int = 0  # accepted after clipping to server.max_update_norm
    dropped: int = 0
    lost: int = 0
    applied: int = 0  # accepted results that went into at least one merge
    in_flight: int = 0
    target: Evaluation | None = None
    staleness: Counter[int] = field(default_factory=Counter)  # accepted results by staleness
    busy_time: dict[int, float] = field(default_factory=dict)  # per client: time with a job
    local_evaluations: list[LocalEvaluation] = field(default_factory=list)
    diagnostics: list[MergeDiagnostics] = field(default_factory=list)  # one per merge

    def to_json(self) -> dict[str, Any]:
        """Everything but the global adapter, as JSON-ready data (for checkpoints)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "global_state"}
        data["evaluations"] = [asdict(e) for e in self.evaluations]
        data["local_evaluations"] = [asdict(e) for e in self.local_evaluations]
        data["diagnostics"] = [d.as_event() for d in self.diagnostics]
        data["target"] = None if self.target is None else self.evaluations.index(self.target)
        data["staleness"] = sorted(self.staleness.items())
        data["busy_time"] = sorted(self.busy_time.items())
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], global_state: AdapterState) -> Outcome:
        evaluations = [Evaluation(**e) for e in data["evaluations"]]
        target = data["target"]
        return cls(
            **{
                **data,
                "global_state": global_state,
                "evaluations": evaluations,
                "target": None if target is None else evaluations[target],
                "staleness": Counter(dict(data["staleness"])),
                "busy_time": dict(data["busy_time"]),
                "local_evaluations": [LocalEvaluation(**e) for e in data["local_evaluations"]],
                "diagnostics": [MergeDiagnostics.from_event(d) for d in data["diagnostics"]],
            }
        )
