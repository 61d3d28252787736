"""A sweep: every (task, setting, arm, seed) cell of a study is one ``fedlora run`` in its own
folder.

A study file names a base experiment config, the arms as ``--set``-style overrides, and
optionally settings (another axis of overrides, e.g. IID against non-IID data) that every arm
runs under. Every
cell's config is built and validated before the first one runs, so a typo in the last arm
costs nothing. A finished cell (its ``summary.json`` exists and its config is the one planned)
is skipped when the sweep runs again, so a long study can be completed over several sittings;
a cell interrupted mid-run (killed, or stopped with Ctrl-C) leaves a ``.partial`` folder with
its checkpoint, which the next sweep resumes; a cell whose config changed is run again.
"""

from __future__ import annotations

import itertools
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    model_validator,
)

from fedlora.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    read_yaml,
    with_resolved_data_dir,
)
from fedlora.results.folders import hold_run_folder
from fedlora.results.store import CHECKPOINT_FILE, SUMMARY_FILE, read_config


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    base: Path  # the experiment config every cell starts from (relative to the study file)
    tasks: list[str] = Field(default_factory=list)  # empty: the base config's task
    seeds: list[int] = Field(default_factory=lambda: [0])
    arms: dict[str, dict[str, Any]]  # arm name -> {dotted.key: value} overrides
    task_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # setting name -> overrides; every arm runs under every setting (none: the base as is)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # arms the table states speedups against (time-to-target ratios, per seed)
    baselines: list[str] = Field(default_factory=list)
    # [arm, reference] pairs the table also compares paired, beyond the baselines (e.g. an
    # upper bound against a lower one)
    contrasts: list[tuple[str, str]] = Field(default_factory=list)
    # evaluation steps (global model versions; under FedAvg, rounds) at which the table also
    # pairs the arms, from the predictions every evaluation wrote (e.g. [2]: after round 2)
    paired_steps: list[NonNegativeInt] = Field(default_factory=list)

    @model_validator(mode="after")
    def _named_arms_exist(self) -> StudyConfig:
        for key, names in (
            ("baselines", self.baselines),
            ("contrasts", [name for pair in self.contrasts for name in pair]),
        ):
            unknown = sorted({name for name in names if name not in self.arms})
            if unknown:
                raise ValueError(f"{key}: {', '.join(unknown)} not among the arms")
        if self.paired_steps and not (self.baselines or self.contrasts):
            raise ValueError("paired_steps: no baselines or contrasts to pair the arms against")
        return self


@dataclass(frozen=True)
class Cell:
    task: str
    setting: str | None
    arm: str
    seed: int
    config: ExperimentConfig
    folder: Path
    # a copy of the cell's files kept beside the study's table (:mod:`fedlora.studies.kept`),
    # not its run folder: the record of a run made with some data folder on some machine
    kept: bool = False

    @property
    def group(self) -> str:
        """The table this cell belongs to: its task, and its setting if the study has any."""
        return self.task.upper() + (f", {self.setting}" if self.setting else "")

    @property
    def done(self) -> bool:
        """Finished with this very config; a cell whose config has changed since runs again.

        The stored config is read back through the current schema, so a key added later with
        a default (which changes nothing the cell ran) does not make a finished cell stale;
        nor do ``runtime`` settings (threads), which change how fast a cell runs, not its
        experiment, nor, for a kept copy, the data folder it was run with.
        """
        if not (self.folder / SUMMARY_FILE).is_file():
            return False
        try:
            stored = read_config(self.folder)
        except ConfigError:  # written by a schema that no longer validates: run it again
            return False
        return _same_experiment(stored, self.config, data_folder=not self.kept)


def done_by_group_arm(cells: Sequence[Cell]) -> dict[str, dict[str, list[Cell]]]:
    """The finished cells, by table (:attr:`Cell.group`) and arm, in the study's order."""
    grouped: dict[str, dict[str, list[Cell]]] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        if cell.done:
            grouped[cell.group][cell.arm].append(cell)
    return grouped


def _same_experiment(
    stored: ExperimentConfig, planned: ExperimentConfig, data_folder: bool = True
) -> bool:
    """The same experiment: runtime settings aside, the data folder as each resolves it
    (unless not ``data_folder``).

    A plan given no data folder at all (no ``data.dir``, no ``$FEDLORA_DATA``) cannot tell
    one folder from another, so it takes the stored one: listing a study or writing its table
    needs no data, and running a cell stops at its preflight with a message saying how to
    give one.
    """
    stored = with_resolved_data_dir(stored).model_copy(update={"runtime": planned.runtime})
    planned = with_resolved_data_dir(planned)
    if planned.data.dir is None or not data_folder:
        data = planned.data.model_copy(update={"dir": stored.data.dir})
        planned = planned.model_copy(update={"data": data})
    return stored == planned


def _resumable(folder: Path, config: ExperimentConfig) -> bool:
    """A killed or interrupted run of this very config, with a checkpoint to continue from."""
    if not (folder / CHECKPOINT_FILE).is_file():
        return False
    try:
        return _same_experiment(read_config(folder), config)
    except ConfigError:
        return False


def load_study(path: Path) -> StudyConfig:
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), str(path))[0]
        study = StudyConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {error}") from None
    return study.model_copy(update={"base": (path.parent / study.base).resolve()})


def _overrides(values: dict[str, Any]) -> list[str]:
    return [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
        for key, value in values.items()
    ]


def _cell_config(
    study: StudyConfig,
    task: str | None,
    setting: str | None,
    arm: str,
    seed: int,
    extra: list[str],
) -> ExperimentConfig:
    sets = [*extra]
    if task is not None:
        sets += [f"data.task={task}", *_overrides(study.task_overrides.get(task, {}))]
    if setting is not None:
        sets += _overrides(study.settings[setting])
    name = "-".join([study.name, *([setting] if setting else []), arm])
    sets += [*_overrides(study.arms[arm]), f"seed={seed}", f"name={name}"]
    try:
        return load_config(study.base, sets)
    except ConfigError as error:
        where = f"arm {arm!r}, seed {seed}" + (f", task {task}" if task else "")
        where += f", setting {setting!r}" if setting else ""
        raise ConfigError(f"{where}: {error}") from None


def plan(study: StudyConfig, root: Path, extra: list[str] | None = None) -> list[Cell]:
    """Every cell, seeds outermost (a first seed of every arm finishes before a second starts)."""
    tasks: list[str | None] = [*study.tasks] or [None]
    settings: list[str | None] = [*study.settings] or [None]
    cells = []
    for seed, task, setting, arm in itertools.product(study.seeds, tasks, settings, study.arms):
        config = _cell_config(study, task, setting, arm, seed, extra or [])
        label = task or config.data.task
        folder = root / label / (setting or "") / arm / f"seed{seed}"
        cells.append(Cell(label, setting, arm, seed, config, folder))
    return cells


def run_sweep(
    cells: list[Cell],
    run: Callable[[ExperimentConfig, Path, bool], object],
    announce: Callable[[Cell, str], None] | None = None,
) -> None:
    """Run each unfinished cell into ``<folder>.partial`` (resuming it from its checkpoint
    when one is there), then move it into place. ``run(config, folder, resume)``."""
    for cell in cells:
        if cell.done:
            if announce:
                announce(cell, "done already")
            continue
        partial, resume = start_partial(cell)
        if announce:
            announce(cell, "resuming" if resume else "running")
        run(cell.config, partial, resume)
        finish_partial(cell, partial)


def start_partial(cell: Cell) -> tuple[Path, bool]:
    """The folder a cell runs in, ``<folder>.partial``, and whether it resumes a checkpoint
    there. An unresumable leftover is removed while holding its lock, so the folder of a run
    still writing it (another study on the same cells) is refused, naming its process."""
    partial = cell.folder.with_name(cell.folder.name + ".partial")
    resume = _resumable(partial, cell.config)
    if not resume and partial.exists():
        with hold_run_folder(partial):
            shutil.rmtree(partial)
    return partial, resume


def finish_partial(cell: Cell, partial: Path) -> None:
    """A finished run moves into the cell's place (replacing a stale result, if any)."""
    shutil.rmtree(cell.folder, ignore_errors=True)
    partial.rename(cell.folder)
