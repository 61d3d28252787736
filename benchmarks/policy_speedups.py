"""FedFa's speedup over FedAvg, Plato's semi-asynchronous server and FedBuff, over many draws of
client speeds; prints JSON.

One speedup from one draw of client speeds says little: the draw decides most of it. This runs
every policy on the fast logistic learner (``fedlora.client.fastlearner``) for ``--seeds``
draws of Pareto(1) speeds capped at 20 (20 clients, 10 at work, K = 5), IID and label-skewed,
with the same number of client updates for every arm. The server step size η of FedBuff and of
FedFa-delta is tuned on a small grid (the η with the lowest median time to target), so the
comparison is best-tuned against best-tuned.

Every arm is evaluated after every merge, so the global at any virtual time is known exactly;
its scores are read off grids of virtual times shared by every arm of a draw (the latest
global at each point, FedAvg included). Time to target is the first point of a fine grid with
dev loss ≤ the loss target, and the first point of a coarser evaluation grid where the mean
accuracy of the last three points ≥ the accuracy target. The targets sit a little way (a
tenth for the loss, 3 % for the accuracy) from the pooled reference (full-batch gradient
descent on all clients' examples) back towards the untrained model. Per pair, the speedup is
the baseline's time over FedFa's, per draw; the table gives its median, quartiles and range
over the draws where both reached the target (``n``; ``missed`` counts an arm's misses).

    python benchmarks/policy_speedups.py [--seeds 20] [--rounds 25]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedlora.client.fastlearner import FastLearner, FastTask
from fedlora.config import ExperimentConfig, build_config
from fedlora.results.events import EventLog
from fedlora.results.target import first_reaching
from fedlora.server import Evaluation
from fedlora.sim.engine import build_simulation

# arm → (server settings, the η grid it is tuned on; None: no server step size)
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
# Grid spacings, as shares of the fastest client's job time: fine for the loss (the global is
# known exactly between merges), an evaluation period for the smoothed accuracy.
FINE_STEP = 1 / 20
EVAL_STEP = 1 / 4
# Targets: this share of the way from the pooled reference back to the untrained model (the
# accuracy saturates early, so its target sits closer to the reference).
TARGET_GAP = {"loss": 0.1, "accuracy": 0.03}


def make_config(
    server: dict[str, Any], eta: float | None, seed: int, rounds: int
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
        }
    )


def simulate(config: ExperimentConfig, task: FastTask) -> list[Evaluation]:
    learner = FastLearner(config, task)
    sizes = [len(i) for i in learner.indices]
    return build_simulation(config, learner, sizes, EventLog()).run().evaluations


def on_grid(evaluations: Sequence[Evaluation], grid: np.ndarray) -> list[dict[str, float]]:
    """The scores of the latest global at each grid time (evaluations come after every merge)."""
    times = np.array([e.time for e in evaluations])
    latest = np.searchsorted(times, grid, side="right") - 1
    return [evaluations[i].metrics for i in latest]


def time_to_targets(
    evaluations: Sequence[Evaluation], horizon: float, job: float, targets: dict[str, float]
) -> dict[str, float]:
    """Virtual time to the loss target on the fine grid, and to the accuracy target by the
    running mean of ``SMOOTH`` points of the evaluation grid; inf if never."""
    found = {}
    for measure, metric, step, smooth in (
        ("loss", "loss", FINE_STEP, 1),
        ("smoothed_accuracy", "accuracy", EVAL_STEP, SMOOTH),
    ):
        grid = np.arange(0.0, horizon + job * step, job * step)
        index = first_reaching(on_grid(evaluations, grid), metric, targets[metric], smooth)
        found[measure] = math.inf if index is None else float(grid[index])
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
        config.train.local_steps  # type: ignore[operator]
        * config.train.batch_size
        * task.tokens_per_example
        * config.clients.seconds_per_token
    )
    # time[arm][eta][measure] = per-seed times to target
    times: dict[str, dict[float | None, dict[str, list[float]]]] = {}
    runs = {}
    for seed in range(seeds):
        for arm, (server, etas) in ARMS.items():
            for eta in etas or [None]:
                runs[arm, eta, seed] = simulate(make_config(server, eta, seed, rounds), task)
        # one pair of grids per draw, shared by every arm, up to the longest run
        horizon = max(e[-1].time for e in runs.values())
        for (arm, eta, _), evaluations in runs.items():
            found = time_to_targets(evaluations, horizon, job, targets)
            per = times.setdefault(arm, {}).setdefault(eta, {"loss": [], "smoothed_accuracy": []})
            for measure, t in found.items():
                per[measure].append(t)
        runs.clear()

    def median_time(per: dict[str, list[float]]) -> float:
        return statistics.median(per["loss"])  # inf when most draws miss the target

    best = {
        arm: min(by_eta, key=lambda eta: median_time(by_eta[eta])) for arm, by_eta in times.items()
    }
    tuned = {arm: times[arm][best[arm]] for arm in times}
    arms = {
        arm: {
            "eta": best[arm],
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
            for measure in ("loss", "smoothed_accuracy")
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
    report = {
        "settings": {
            "seeds": args.seeds,
            "client_updates": args.rounds * 10,
            "clients": 20,
            "concurrency": 10,
            "window": 5,
            "speed": "pareto alpha 1, cap 20",
            "arms": {arm: {**server, "eta_grid": etas} for arm, (server, etas) in ARMS.items()},
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
