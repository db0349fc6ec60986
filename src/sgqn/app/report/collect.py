"""The trials of a sweep (or every training run of an experiment) read from MLflow into plain dataclasses.

A *trial* is one point of the grid (algorithm, task, seed and any other swept option); its *run* is the
`sgqn fit` run that trained it. A trial is **complete** when its run is FINISHED and its last evaluation
is at a step ≥ its ``num_agent_steps``; only complete trials enter the table, every other one is listed
with the reason (``no run``, ``FAILED at step 2000/4000``). A trial launched several times uses its
newest complete run, else its newest run.

Besides the returns, a trial holds its run's saliency scores at each mode's final evaluation
(`SCORE_METRICS`: ``eval/<mode>/saliency_precision`` … as `sgqn fit` logs them, issue 24): the value
logged at the step of the mode's final return. A score not logged at that step (a run from before these
scores, an algorithm without an attribution predictor, saliency not computed at that evaluation, or
undefined there) is absent, never 0.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal
from unittest import mock

from sgqn.algorithms import ALGORITHMS
from sgqn.app.errors import ConfigError, did_you_mean
from sgqn.app.sweeps.tracking import (
    KIND_SWEEP,
    KIND_TAG,
    SWEEP_NAME_TAG,
    TRIAL_TAG,
    child_runs,
    expected_trials,
    find_sweep,
)
from sgqn.envs.names import mode_order

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

EVAL_KEY = re.compile(r"eval/([^/]+)/return_mean")
# The saliency scores the report tables (`sgqn.evaluation.focus`): the critic's and SGQN's predictor's.
SCORE_METRICS = ("saliency_precision", "saliency_tid", "predicted_precision", "predicted_tid")
SCORE_KEY = re.compile(rf"eval/([^/]+)/({'|'.join(SCORE_METRICS)})")
ALGORITHM_ORDER = tuple(ALGORITHMS)  # baselines first, as in the paper
SETTING_KEYS = {"algorithm", "task", "seed"}  # override keys that are a trial's coordinates, not a variant


def method_order(method: str) -> tuple[int, str]:
    algorithm = method.split(" ")[0]
    return (
        ALGORITHM_ORDER.index(algorithm) if algorithm in ALGORITHM_ORDER else len(ALGORITHM_ORDER),
        method,
    )


def seed_order(seed: str) -> tuple[int, int, str]:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


@dataclass
class Curve:
    """One metric of one run: its steps (agent steps, increasing) and the value logged at each."""

    steps: list[int]
    values: list[float]


@dataclass
class Trial:
    """One expected trial and what its chosen run logged (``run_id`` None: it has no run)."""

    name: str  # e.g. ``sgqn-walker_walk-s0``
    algorithm: str
    task: str
    seed: str  # as the runs' ``seed`` tag spells it
    method: str  # the table's column group: the algorithm, plus the swept options of its variant
    num_agent_steps: int | None = None  # expected training length; None: unknown (then FINISHED suffices)
    run_id: str | None = None
    run_name: str | None = None
    status: str | None = None  # FINISHED, FAILED, KILLED, RUNNING, SCHEDULED
    last_step: int | None = None  # step of the last evaluation (any mode); None: none logged
    finals: dict[str, float] = field(default_factory=dict)  # mode → return_mean at its last step
    curves: dict[str, Curve] = field(default_factory=dict)  # mode → eval/<mode>/return_mean history
    # score (one of SCORE_METRICS) → mode → its value at the mode's final evaluation (absent: not logged)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    runs: int = 0  # how many runs this trial has (re-launches)

    @property
    def complete(self) -> bool:
        if self.status != "FINISHED" or self.last_step is None:
            return False
        return self.num_agent_steps is None or self.last_step >= self.num_agent_steps

    @property
    def reason(self) -> str:
        """Why the trial is not complete (``""`` when it is)."""
        if self.complete:
            return ""
        if self.run_id is None:
            return "no run"
        total = "?" if self.num_agent_steps is None else str(self.num_agent_steps)
        if self.last_step is None:
            text = f"{self.status} with no evaluation logged (of {total} steps)"
        else:
            text = f"{self.status} at step {self.last_step}/{total}"
        return text + (f" (newest of {self.runs} runs)" if self.runs > 1 else "")


@dataclass
class Collection:
    """The trials of one sweep (``kind="sweep"``) or of one experiment's training runs."""

    kind: Literal["sweep", "experiment"]
    name: str  # the sweep's name, or the experiment's
    experiment: str
    tracking_uri: str
    trials: list[Trial]
    parent_run_id: str | None = None  # the sweep's parent run; None for an experiment

    @property
    def complete(self) -> list[Trial]:
        return [t for t in self.trials if t.complete]

    @property
    def missing(self) -> list[Trial]:
        return [t for t in self.trials if not t.complete]

    def missing_lines(self) -> list[str]:
        return [f"{t.name}: {t.reason}" for t in self.missing]

    @property
    def tasks(self) -> list[str]:
        return sorted({t.task for t in self.trials})

    @property
    def methods(self) -> list[str]:
        return sorted({t.method for t in self.trials}, key=method_order)

    @property
    def modes(self) -> list[str]:
        """The modes the complete trials were evaluated in (every trial's, when none is complete)."""
        trials = self.complete or self.trials
        return sorted({m for t in trials for m in t.finals}, key=mode_order)

    def trials_of(self, task: str, method: str) -> list[Trial]:
        """The expected trials of one table cell, in seed order."""
        found = [t for t in self.trials if t.task == task and t.method == method]
        return sorted(found, key=lambda t: seed_order(t.seed))


# --------------------------------------------------------------------------- runs


def metric_curve(client: MlflowClient, run_id: str, key: str) -> Curve:
    """A metric's history by step; a step logged twice keeps its newest value (as MLflow's latest does)."""
    points: dict[int, tuple[int, float]] = {}
    for metric in client.get_metric_history(run_id, key):
        if metric.step not in points or metric.timestamp >= points[metric.step][0]:
            points[metric.step] = (metric.timestamp, metric.value)
    steps = sorted(points)
    return Curve(steps, [points[s][1] for s in steps])


def _as_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None  # absent, or "None"


def with_run(client: MlflowClient, trial: Trial, run: Run) -> Trial:
    """`trial` filled from `run`: status, evaluation curves, final returns, last evaluation step."""
    curves = {}
    for key in run.data.metrics:
        match = EVAL_KEY.fullmatch(key)
        if match:
            curve = metric_curve(client, run.info.run_id, key)
            if curve.steps:
                curves[match[1]] = curve
    steps = trial.num_agent_steps
    if steps is None:  # the sweep did not set it: the length the run itself was given
        steps = _as_int(run.data.params.get("num_agent_steps"))
    return replace(
        trial,
        num_agent_steps=steps,
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        status=run.info.status,
        last_step=max((c.steps[-1] for c in curves.values()), default=None),
        finals={mode: c.values[-1] for mode, c in curves.items()},
        curves=curves,
    )


def with_scores(client: MlflowClient, trial: Trial, run: Run) -> Trial:
    """`trial` (filled from `run` by `with_run`) with `run`'s saliency scores at each mode's final
    evaluation: the value logged at the step of the mode's final return. One not logged at that step, or
    not finite, is left out."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for key in run.data.metrics:
        match = SCORE_KEY.fullmatch(key)
        if match is None or match[1] not in trial.curves:
            continue
        final_step = trial.curves[match[1]].steps[-1]
        curve = metric_curve(client, run.info.run_id, key)
        if final_step in curve.steps:
            value = curve.values[curve.steps.index(final_step)]
            if math.isfinite(value):
                scores[match[2]][match[1]] = value
    return replace(trial, scores=dict(scores))


def pick_run(client: MlflowClient, trial: Trial, runs: Sequence[Run]) -> Trial:
    """`trial` filled from its newest complete run, else from its newest run (unchanged if it has none),
    with that run's saliency scores."""
    chosen: tuple[Trial, Run] | None = None
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        filled = with_run(client, trial, run)
        if filled.complete:
            chosen = (filled, run)
            break
        chosen = chosen or (filled, run)
    if chosen is None:
        return replace(trial, runs=len(runs))
    return replace(with_scores(client, *chosen), runs=len(runs))


# --------------------------------------------------------------------------- sweeps and experiments


def method_labels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each expected trial's method: its algorithm, plus ``key=value`` for each option that tells apart
    trials of one algorithm on one task besides the seed (e.g. ``sgqn quantile=0.9`` when the grid
    sweeps ``model.sgqn.quantile``), so that different configurations are never averaged together."""

    def options(record: Mapping[str, Any]) -> dict[str, str]:
        overrides = record.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            return {}
        return {str(k): str(v) for k, v in overrides.items() if str(k).rpartition(".")[2] not in SETTING_KEYS}

    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for record in records:
        groups[(str(record["algorithm"]), str(record["task"]))].append(options(record))
    varying: dict[str, set[str]] = defaultdict(set)
    for (algorithm, _), group in groups.items():
        for key in set().union(*group):
            if len({o.get(key) for o in group}) > 1:
                varying[algorithm].add(key)
    labels = []
    for record in records:
        algorithm, values = str(record["algorithm"]), options(record)
        extra = [f"{k.rpartition('.')[2]}={values.get(k, '-')}" for k in sorted(varying[algorithm])]
        labels.append(" ".join([algorithm, *extra]))
    return labels


def collect_sweep(client: MlflowClient, sweep: str) -> Collection:
    """The expected trials of a sweep (parent run id, or name: its newest parent run) and their runs."""
    from mlflow.exceptions import MlflowException

    try:
        parent = find_sweep(client, sweep)
    except LookupError as err:
        raise ConfigError(f"--sweep {sweep}: {err}") from None
    name = parent.data.tags.get(SWEEP_NAME_TAG, sweep)
    where = f"sweep {name!r} (parent run {parent.info.run_id})"
    try:
        with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):  # one small file
            records = expected_trials(client, parent)
    except (MlflowException, OSError, ValueError):
        raise ConfigError(
            f"{where} has no readable list of its trials (artifact sweep/trials.json)"
        ) from None
    runs: dict[str, list[Run]] = defaultdict(list)
    for run in child_runs(client, parent):
        runs[run.data.tags[TRIAL_TAG]].append(run)
    if not runs:
        raise ConfigError(f"{where} has no trial runs yet ({len(records)} expected)")
    trials = []
    for record, method in zip(records, method_labels(records), strict=True):
        trial = Trial(
            name=str(record["trial"]),
            algorithm=str(record["algorithm"]),
            task=str(record["task"]),
            seed=str(record["seed"]),
            method=method,
            num_agent_steps=_as_int(record.get("num_agent_steps")),
        )
        trials.append(pick_run(client, trial, runs.get(trial.name, [])))
    experiment = client.get_experiment(parent.info.experiment_id).name
    return Collection("sweep", name, experiment, client.tracking_uri, trials, parent.info.run_id)


def training_runs(runs: Iterable[Run]) -> list[Run]:
    """The `sgqn fit` runs among `runs`: those tagged with an algorithm, sweep parent runs excluded."""
    return [r for r in runs if "algorithm" in r.data.tags and r.data.tags.get(KIND_TAG) != KIND_SWEEP]


def collect_experiment(client: MlflowClient, experiment: str) -> Collection:
    """Every training run of an experiment, one trial per (algorithm, task, seed).

    Without a sweep's list there is no knowing which trials were meant to exist: a cell expects the
    seeds that have a run (of any status) for its algorithm and task.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigError(
            f"--experiment {experiment}: no MLflow experiment of that name at {client.tracking_uri}"
            f"{did_you_mean(experiment, names)}"
        )
    everything = client.search_runs(
        [found.experiment_id], order_by=["attributes.start_time ASC"], max_results=50_000
    )
    runs: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in training_runs(everything):
        tags = run.data.tags
        runs[(tags["algorithm"], tags.get("task", "?"), tags.get("seed", "?"))].append(run)
    if not runs:
        raise ConfigError(f"experiment {experiment!r} has no training runs (runs tagged `algorithm`)")
    trials = [
        pick_run(client, Trial(f"{a}-{t}-s{s}", a, t, s, method=a), group)
        for (a, t, s), group in sorted(runs.items(), key=lambda kv: (kv[0][:2], seed_order(kv[0][2])))
    ]
    return Collection("experiment", experiment, experiment, client.tracking_uri, trials)
