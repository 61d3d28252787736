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
where both reached the target (``n``; ``missed`` counts an arm's misses; ``fedfa_only``,
``baseline_only`` and ``neither`` count the draws left out of the ratios).

By default every arm runs ``--rounds`` × 10 client updates (FedAvg: that many rounds of 10),
so each arm stops at its own virtual time, and η is tuned and reported on the same draws.
``--horizon`` stops every arm at the same virtual time instead (a target reached after it is
missed); ``--tune-seeds`` and ``--report-seeds`` choose η on some draws and report on others.
``--staleness`` names the staleness functions s(τ) the tuned delta arms run under, the same in
FedBuff and FedFa-delta: ``constant`` (no discount; Plato's FedBuff, a uniform mean of the
buffered deltas) keeps the arms' names, ``polynomial`` ((τ+1)^−½, with τ in absorbed client
updates) adds ``fedbuff-discounted`` and ``fedfa-delta-discounted``. With both, the pair
FedFa-delta (undiscounted) against FedBuff (discounted) is the unmatched comparison too.

    python benchmarks/policy_speedups.py [--seeds 20] [--rounds 25]
    python benchmarks/policy_speedups.py --tune-seeds 0-9 --report-seeds 10-19 \
        --horizon 3700 --staleness constant polynomial
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from fedlora.client.fastlearner import FastLearner, FastTask
from fedlora.config import ExperimentConfig, build_config
from fedlora.outcome import Evaluation, Outcome
from fedlora.policies.staleness import staleness_factor
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
# s(τ) = (τ+1)^−½ for the "-discounted" delta arms; their η grids start this many times higher
# (between 1 and 1/s(8) ≈ 3 at the arms' mean staleness of about 8.5 absorbed updates; the
# grid widens past an edge anyway)
DISCOUNT = {"function": "polynomial", "a": 0.5}
DISCOUNTED_ETA_SCALE = 2.0
DISCOUNTED_PAIRS = [
    ("fedfa-delta-discounted", "fedbuff-discounted"),  # matched: s(τ) in both
    ("fedfa-delta", "fedbuff-discounted"),  # unmatched: s(τ) in FedBuff only
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


def arms_under(staleness: Sequence[str]) -> dict[str, tuple[dict[str, Any], list[float] | None]]:
    """The arms for the ``--staleness`` functions: the untuned arms once, and the tuned delta
    arms under each function (``polynomial`` adds the ``-discounted`` ones)."""
    arms = {arm: spec for arm, spec in ARMS.items() if spec[1] is None or "constant" in staleness}
    if "polynomial" in staleness:
        for arm, (server, etas) in ARMS.items():
            if etas is not None:
                arms[f"{arm}-discounted"] = (
                    {**server, "staleness": DISCOUNT},
                    [round(eta * DISCOUNTED_ETA_SCALE, 6) for eta in etas],
                )
    return arms


def make_config(
    server: dict[str, Any],
    eta: float | None,
    seed: int,
    rounds: int,
    grid: float | None = None,
    horizon: float | None = None,
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
                **({} if horizon is None else {"max_virtual_time": horizon}),
            },
            "eval": {"grid_seconds": grid},
        }
    )


def simulate(config: ExperimentConfig, task: FastTask) -> Outcome:
    learner = FastLearner(config, task)
    sizes = [len(i) for i in learner.indices]
    return build_simulation(config, learner, sizes, EventLog()).run()


def on_grid(evaluations: Sequence[Evaluation], grid: np.ndarray) -> list[dict[str, float]]:
    """The scores of the latest global at each grid time (the run's own grid points, then its
    final global from its end on)."""
    times = np.array([e.time for e in evaluations])
    latest = np.searchsorted(times, grid, side="right") - 1
    return [evaluations[i].metrics for i in latest]


def time_to_targets(
    evaluations: Sequence[Evaluation],
    step: float,
    targets: dict[str, float],
    horizon: float | None = None,
) -> dict[str, float]:
    """Virtual time to the loss target on the grid of ``step`` seconds, and to the accuracy
    target by the running mean of ``SMOOTH`` evaluation periods; inf if never (with a
    ``horizon``: if not by then)."""
    end = evaluations[-1].time
    # the same floats as the simulator's grid, long enough for a smoothed mean after the end
    grid = np.arange(0.0, end + step * EVAL_EVERY * (SMOOTH + 1), step)
    if horizon is not None:
        grid = grid[grid <= horizon]
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


Arms = dict[str, tuple[dict[str, Any], list[float] | None]]


@dataclass(frozen=True)
class Design:
    """Which draws tune η and which are reported, when every run stops, and the arms."""

    tune_seeds: tuple[int, ...]
    report_seeds: tuple[int, ...]
    rounds: int  # client updates ÷ 10, when no horizon
    horizon: float | None  # virtual seconds for every arm (then rounds never bind)
    arms: Arms


def spread_of(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def mean_discount(staleness: Counter[int], config: ExperimentConfig) -> float:
    """The mean s(τ) over a run's accepted results."""
    total = sum(staleness.values())
    return sum(n * staleness_factor(t, config.server.staleness) for t, n in staleness.items()) / (
        total or 1
    )


def study(task: FastTask, design: Design) -> dict[str, Any]:
    config = make_config({}, None, 0, design.rounds)
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
    horizon = design.horizon
    # with a horizon, more rounds than any client could finish in it: the horizon stops the run
    rounds = design.rounds if horizon is None else math.ceil(horizon / job) + 1
    runs: dict[tuple[str, float | None], dict[str, list[float]]] = {}

    def times_of(arm: str, eta: float | None, seeds: Sequence[int]) -> Times:
        server = design.arms[arm][0]
        per: Times = {measure: [] for measure in MEASURES}
        counts: dict[str, list[float]] = {
            k: [] for k in ("updates", "merges", "rounds", "end_s", "mean_discount")
        }
        started = time.perf_counter()
        for seed in seeds:
            config = make_config(server, eta, seed, rounds, step, horizon)
            outcome = simulate(config, task)
            found = time_to_targets(outcome.evaluations, step, targets, horizon)
            for measure, t in found.items():
                per[measure].append(t)
            counts["updates"].append(outcome.accepted)
            counts["merges"].append(len(outcome.diagnostics))
            counts["rounds"].append(outcome.rounds)
            counts["end_s"].append(round(outcome.virtual_time, 3))
            counts["mean_discount"].append(round(mean_discount(outcome.staleness, config), 4))
        runs[arm, eta] = counts
        print(
            f"{arm} eta={eta} seeds={seeds[0]}-{seeds[-1]}: {time.perf_counter() - started:.1f}"
            f" s, median loss time {median_time(per)}",
            file=sys.stderr,
            flush=True,
        )
        return per

    same_draws = design.tune_seeds == design.report_seeds
    # grid[arm][eta]: the tuning draws' times to target, for the arms with a step size
    grid: dict[str, dict[float, Times]] = {}
    best: dict[str, float | None] = {}
    tuned: dict[str, Times] = {}  # the reported draws' times at the best eta
    for arm, (_, etas) in design.arms.items():
        if etas is None:
            best[arm] = None
            tuned[arm] = times_of(arm, None, design.report_seeds)
            continue
        by_eta = grid[arm] = dict(tune(partial(times_of, arm, seeds=design.tune_seeds), etas))
        chosen = best[arm] = min(by_eta, key=lambda eta: median_time(by_eta[eta]))
        tuned[arm] = by_eta[chosen] if same_draws else times_of(arm, chosen, design.report_seeds)
    window = config.server.window
    arms = {}
    for arm in design.arms:
        eta, counts = best[arm], runs[arm, best[arm]]
        arms[arm] = {
            "eta": eta,
            "eta_interior": interior(eta, grid.get(arm, {})),
            "eta_grid": {
                str(e): {
                    "median_s": _finite_or_none(median_time(per)),
                    "missed": sum(not math.isfinite(t) for t in per["loss"]),
                }
                for e, per in grid.get(arm, {}).items()
            },
            "time_to_target": {m: spread(ts) for m, ts in tuned[arm].items()},
            "missed": {m: sum(not math.isfinite(t) for t in ts) for m, ts in tuned[arm].items()},
            "per_draw": {m: [_finite_or_none(t) for t in ts] for m, ts in tuned[arm].items()},
            "runs": {k: spread_of(v) for k, v in counts.items()},
        }
        if eta is not None:  # how far the global moves per client delta, all merges together
            share = 1.0 if arm.startswith("fedfa") else 1.0 / window  # FedBuff: mean of K
            discount = statistics.median(counts["mean_discount"])
            arms[arm]["step_per_delta"] = round(eta * share * discount, 4)
    pairs: dict[str, dict[str, Any]] = {}
    for fedfa, baseline in PAIRS + DISCOUNTED_PAIRS:
        if fedfa not in tuned or baseline not in tuned:
            continue
        pairs[f"{fedfa} vs {baseline}"] = {}
        for measure in MEASURES:
            both = list(zip(tuned[fedfa][measure], tuned[baseline][measure], strict=True))
            pairs[f"{fedfa} vs {baseline}"][measure] = {
                **spread([b / f for f, b in both]),
                "equal": sum(f == b and math.isfinite(f) for f, b in both),
                "fedfa_only": sum(math.isfinite(f) and not math.isfinite(b) for f, b in both),
                "baseline_only": sum(not math.isfinite(f) and math.isfinite(b) for f, b in both),
                "neither": sum(not math.isfinite(f) and not math.isfinite(b) for f, b in both),
            }
    return {
        "reference": reference,
        "targets": targets,
        "fastest_job_s": job,
        "grid_step_s": step,
        "arms": arms,
        "speedups": pairs,
    }


def seed_list(text: str) -> tuple[int, ...]:
    """``0-9`` or ``0,3,5``: the speed draws (seeds)."""
    if "-" in text:
        first, last = text.split("-")
        return tuple(range(int(first), int(last) + 1))
    return tuple(int(s) for s in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="draws 0..N-1, tuned and reported")
    parser.add_argument("--rounds", type=int, default=25, help="client updates ÷ 10, every arm")
    parser.add_argument("--tune-seeds", type=seed_list, help="draws that choose η, e.g. 0-9")
    parser.add_argument("--report-seeds", type=seed_list, help="draws reported, e.g. 10-19")
    parser.add_argument("--horizon", type=float, help="stop every arm at this virtual time (s)")
    parser.add_argument(
        "--staleness", nargs="+", choices=("constant", "polynomial"), default=["constant"]
    )
    parser.add_argument("--tasks", nargs="+", choices=("iid", "label_skew"), default=None)
    args = parser.parse_args()
    if (args.tune_seeds is None) != (args.report_seeds is None):
        parser.error("--tune-seeds and --report-seeds go together")
    everyone = tuple(range(args.seeds))
    design = Design(
        tune_seeds=args.tune_seeds or everyone,
        report_seeds=args.report_seeds or everyone,
        rounds=args.rounds,
        horizon=args.horizon,
        arms=arms_under(args.staleness),
    )
    tasks = {"iid": FastTask(), "label_skew": FastTask(skew=0.3)}
    started = time.perf_counter()
    report: dict[str, Any] = {
        "settings": {
            "tune_seeds": list(design.tune_seeds),
            "report_seeds": list(design.report_seeds),
            "stop": (
                f"every arm at {args.horizon:g} virtual s"
                if args.horizon is not None
                else f"every arm after {args.rounds * 10} client updates"
            ),
            "client_updates": None if args.horizon is not None else args.rounds * 10,
            "horizon_s": args.horizon,
            "clients": 20,
            "concurrency": 10,
            "window": 5,
            "speed": "pareto alpha 1, cap 20",
            "staleness": args.staleness,
            "arms": {
                arm: {**server, "eta_start": etas} for arm, (server, etas) in design.arms.items()
            },
            "eta_widen": WIDEN,
            "grid_step_of_job": GRID_STEP,
            "eval_every": EVAL_EVERY,
            "target_gap": TARGET_GAP,
            "smooth": SMOOTH,
        },
    }
    for name in args.tasks or tasks:
        report[name] = study(tasks[name], design)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
