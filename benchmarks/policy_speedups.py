"""FedFa's speedup over FedAvg, Plato's semi-asynchronous server and FedBuff, over many draws of
client speeds; prints JSON.

One speedup from one draw of client speeds says little: the draw decides most of it. This runs
every policy on the fast logistic learner (``fedlora.client.fastlearner``) for ``--seeds``
draws of Pareto(1) speeds capped at 20 (20 clients, 10 at work, K = 5), IID and label-skewed,
with the same number of client updates for every arm. The server step size η of FedBuff and of
FedFa-delta is tuned (the η with the lowest median time to the loss target), starting from a
grid that is widened by ×1.5 past its edge for as long as the best η sits at an edge, so the
comparison is best-tuned against best-tuned and no best η is a grid edge.

Every arm is evaluated on the simulator's virtual-time grid (``eval.grid_seconds``, a
twentieth of the fastest client's job): the latest global at the same times for every arm,
FedAvg included. Time to target is the first grid point with dev loss ≤ the loss target, and
the first point of every fifth grid point (an evaluation period) where the mean accuracy of the
last three such points ≥ the accuracy target. The targets sit a little way (a tenth for the
loss, 3 % for the accuracy) from the pooled reference (full-batch gradient descent on all
clients' examples) back towards the untrained model. Per pair, the speedup is the baseline's
time over FedFa's, per draw; the table gives its median, quartiles and range over the draws
where both reached the target (``n``; ``missed`` counts an arm's misses).

    python benchmarks/policy_speedups.py [--seeds 20] [--rounds 25]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np

from fedlora.client.fastlearner import FastLearner, FastTask
from fedlora.config import ExperimentConfig, build_config
from fedlora.outcome import Evaluation
from fedlora.results.events import EventLog
from fedlora.sim.engine import build_simulation
from fedlora.target import first_reaching

# arm → (server settings, the η grid its tuning starts from; None: no server step size)
ARMS: dict[str, tuple[dict[str, Any], list[float] | None]] = {
    "fedavg": ({"policy": "fedavg", "per_round": 10}, None),
    "semiasync": ({"policy": "semiasync", "staleness_bound": 10}, None),
    "fedbuff": ({"policy": "fedbuff", "update": "delta"}, [2.0, 3.5, 5.0, 7.5, 10.0, 15.0]),
    "fedfa-delta": ({"policy": "fedfa", "update": "delta"}, [1.0, 1.5, 2.0, 3.0, 4.0, 6.0]),
    "fedfa-model": ({"policy": "fedfa"}, None),
}
PAIRS = [
    (fedfa, baseline)
    for fedfa in ("fedfa-delta", "fedfa-model")
    for baseline in ("fedavg", "semiasync", "fedbuff")
]
SMOOTH = 3
# The evaluation grid, as a share of the fastest client's job time: fine for the loss; every
# EVAL_EVERY-th point is an evaluation period for the smoothed accuracy.
GRID_STEP = 1 / 20
EVAL_EVERY = 5
# A best η at an edge of its grid widens the grid by this factor, at most this many times.
WIDEN = 1.5
MAX_WIDENINGS = 8
# Targets: this share of the way from the pooled reference back to the untrained model (the
# accuracy saturates early, so its target sits closer to the reference).
TARGET_GAP = {"loss": 0.1, "accuracy": 0.03}
MEASURES = ("loss", "smoothed_accuracy")


def make_config(
    server: dict[str, Any], eta: float | None, seed: int, rounds: int, grid: float | None = None
) -> ExperimentConfig:
    return build_config(
        {
            "seed": seed,
            "lora": {"r": 1},
            "clients": {
                "num": 20,
                "speed": {"distribution": "pareto", "alpha": 1.0, "cap": 20},
                "bandwidth_mbps": 1000,
            },
            "train": {"local_steps": 10, "batch_size": 16, "lr": 0.1},
            "server": {
                "aggregator": "fedavg",
                "concurrency": 10,
                "window": 5,
                "weights": "uniform",
                "rounds": rounds,
                **server,
                **({} if eta is None else {"server_lr": eta}),
            },
            "eval": {"grid_seconds": grid},
        }
    )


def simulate(config: ExperimentConfig, task: FastTask) -> list[Evaluation]:
    learner = FastLearner(config, task)
    sizes = [len(i) for i in learner.indices]
    return build_simulation(config, learner, sizes, EventLog()).run().evaluations


def on_grid(evaluations: Sequence[Evaluation], grid: np.ndarray) -> list[dict[str, float]]:
    """The scores of the latest global at each grid time (the run's own grid points, then its
    final global from its end on)."""
    times = np.array([e.time for e in evaluations])
    latest = np.searchsorted(times, grid, side="right") - 1
    return [evaluations[i].metrics for i in latest]


def time_to_targets(
    evaluations: Sequence[Evaluation], step: float, targets: dict[str, float]
) -> dict[str, float]:
    """Virtual time to the loss target on the grid of ``step`` seconds, and to the accuracy
    target by the running mean of ``SMOOTH`` evaluation periods; inf if never."""
    end = evaluations[-1].time
    # the same floats as the simulator's grid, long enough for a smoothed mean after the end
    grid = np.arange(0.0, end + step * EVAL_EVERY * (SMOOTH + 1), step)
    found = {}
    for measure, metric, points, smooth in (
        ("loss", "loss", grid, 1),
        ("smoothed_accuracy", "accuracy", grid[::EVAL_EVERY], SMOOTH),
    ):
        index = first_reaching(on_grid(evaluations, points), metric, targets[metric], smooth)
        found[measure] = math.inf if index is None else float(points[index])
    return found


def _finite_or_none(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    finite = sorted(v for v in values if math.isfinite(v) and v > 0)
    if not finite:
        return {"n": 0, "median": None}
    q1, _, q3 = (
        statistics.quantiles(finite, n=4, method="inclusive")
        if len(finite) > 1
        else [finite[0]] * 3
    )
    return {
        "n": len(finite),
        "median": round(statistics.median(finite), 3),
        "min": round(finite[0], 3),
        "q1": round(q1, 3),
        "q3": round(q3, 3),
        "max": round(finite[-1], 3),
    }


Times = dict[str, list[float]]  # measure → per-draw virtual times to target (inf: missed)


def median_time(times: Times) -> float:
    return statistics.median(times["loss"])  # inf when most draws miss the target


def tune(times_at: Callable[[float], Times], etas: Sequence[float]) -> dict[float, Times]:
    """Times to target at each η of ``etas``, widened past an edge while the best η is there
    (strictly better than its neighbour), until it is interior or ``MAX_WIDENINGS`` ran out."""
    found = {eta: times_at(eta) for eta in etas}
    for _ in range(MAX_WIDENINGS):
        grid = sorted(found)
        medians = [median_time(found[eta]) for eta in grid]
        if not math.isfinite(min(medians)):
            break
        if medians[0] < min(medians[1:]):
            wider = grid[0] / WIDEN
        elif medians[-1] < min(medians[:-1]):
            wider = grid[-1] * WIDEN
        else:
            break
        found[wider] = times_at(wider)
    return dict(sorted(found.items()))


def interior(eta: float | None, grid: Iterable[float | None]) -> bool:
    """Whether a tuned ``eta`` lies strictly inside its grid (trivially, without a step size)."""
    etas = [e for e in grid if e is not None]
    return eta is None or min(etas) < eta < max(etas)


def study(task: FastTask, seeds: int, rounds: int) -> dict[str, Any]:
    config = make_config({}, None, 0, rounds)
    probe = FastLearner(config, task)
    reference = probe.reference()
    start = probe.evaluate(probe.initial_state())
    targets = {
        metric: reference[metric] + gap * (start[metric] - reference[metric])
        for metric, gap in TARGET_GAP.items()
    }
    job = (  # the fastest client's job time (slowness 1), transfers aside
        config.train.local_steps
        * config.train.batch_size
        * task.tokens_per_example
        * config.clients.seconds_per_token
    )
    step = job * GRID_STEP

    def times_of(server: dict[str, Any], eta: float | None) -> Times:
        per: Times = {measure: [] for measure in MEASURES}
        for seed in range(seeds):
            evaluations = simulate(make_config(server, eta, seed, rounds, step), task)
            for measure, t in time_to_targets(evaluations, step, targets).items():
                per[measure].append(t)
        return per

    # times[arm][eta]: per-draw times to target; eta None for an arm without a step size
    times: dict[str, dict[float | None, Times]] = {}
    for arm, (server, etas) in ARMS.items():
        if etas is None:
            times[arm] = {None: times_of(server, None)}
        else:
            times[arm] = {eta: t for eta, t in tune(partial(times_of, server), etas).items()}
    best = {
        arm: min(by_eta, key=lambda eta: median_time(by_eta[eta])) for arm, by_eta in times.items()
    }
    tuned = {arm: times[arm][best[arm]] for arm in times}
    arms = {
        arm: {
            "eta": best[arm],
            "eta_interior": interior(best[arm], times[arm]),
            "eta_grid": {
                str(eta): {
                    "median_s": _finite_or_none(median_time(per)),
                    "missed": sum(not math.isfinite(t) for t in per["loss"]),
                }
                for eta, per in times[arm].items()
            },
            "time_to_target": {m: spread(ts) for m, ts in tuned[arm].items()},
            "missed": {m: sum(not math.isfinite(t) for t in ts) for m, ts in tuned[arm].items()},
        }
        for arm in times
    }
    pairs = {
        f"{fedfa} vs {baseline}": {
            measure: spread(
                [
                    b / f
                    for f, b in zip(tuned[fedfa][measure], tuned[baseline][measure], strict=True)
                ]
            )
            for measure in MEASURES
        }
        for fedfa, baseline in PAIRS
    }
    return {"reference": reference, "targets": targets, "arms": arms, "speedups": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=25, help="client updates ÷ 10, every arm")
    args = parser.parse_args()
    started = time.perf_counter()
    report: dict[str, Any] = {
        "settings": {
            "seeds": args.seeds,
            "client_updates": args.rounds * 10,
            "clients": 20,
            "concurrency": 10,
            "window": 5,
            "speed": "pareto alpha 1, cap 20",
            "arms": {arm: {**server, "eta_start": etas} for arm, (server, etas) in ARMS.items()},
            "eta_widen": WIDEN,
            "grid_step_of_job": GRID_STEP,
            "eval_every": EVAL_EVERY,
            "target_gap": TARGET_GAP,
            "smooth": SMOOTH,
        },
        "iid": study(FastTask(), args.seeds, args.rounds),
        "label_skew": study(FastTask(skew=0.3), args.seeds, args.rounds),
    }
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
