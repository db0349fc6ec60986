"""MLflow tracking of a training run: its name and tags, a logger with working defaults (a run per fit,
resumable into the same run), the resolved config saved into the run."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from sgqn.app.store import absolute_uri, default_tracking_uri, store_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient


def run_name(*parts: object, when: float | None = None) -> str:
    """``<parts…>-YYYYmmdd-HHMMSS`` in local time, e.g. ``sgqn-cartpole_swingup-s0-20261129-134501``.

    MLflow's own names ("overjoyed-slug-911") come from the global `random` module, which
    `seed_everything` seeds: every run of one seed got the same name. This one reads only the clock.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if when is None else when))
    return "-".join([*(str(p) for p in parts), stamp])


def git_commit(path: str | Path | None = None) -> str:
    """Short sha of the checkout holding `path` (default: this package), ``-dirty`` if it has changes.

    ``"unknown"`` when the package is not a tracked file of a git checkout (e.g. installed from a wheel
    into a `.venv` that happens to sit inside a repository), or git is missing; never raises.
    """
    folder = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        git("ls-files", "--error-unmatch", Path(__file__).name if path is None else ".")
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain")  # ignored files (outputs, mlflow.db) do not count
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def run_tags(algorithm: str, task: str, seed: int) -> dict[str, str]:
    """The tags every training run carries (filter and group runs by them in the MLflow UI)."""
    return {
        "algorithm": str(algorithm),
        "task": str(task),
        "seed": str(seed),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
    }


def name_run(logger: MLFlowLogger, name: str | None, tags: Mapping[str, str]) -> bool:
    """Give a not-yet-created MLflow run `name` (unless one was set) and `tags` (user tags win).

    Returns False, changing nothing, when the logger already has its run (e.g. `run_id` given).
    """
    if logger._run_id is not None:
        return False
    if logger._run_name is None and name is not None:
        logger._run_name = name
        if isinstance(logger, SGQNMLFlowLogger):
            logger.unique_name = True
    logger.tags = {**tags, **(logger.tags or {})}
    return True


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI: which tabs an experiment's page shows
TRAINING_KIND = "custom_model_development"  # "Machine learning": runs, metrics, artifacts (not GenAI's)


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag an experiment as a model-training one for MLflow 3's UI (its page shows runs and model metrics,
    not the GenAI tabs: traces, prompts), unless its kind was chosen already (the user's choice stands)."""
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


class SGQNMLFlowLogger(MLFlowLogger):
    """Lightning's `MLFlowLogger` defaulting to `sqlite:///mlflow.db` in the working directory.

    Args:
        experiment_name: MLflow experiment (one per study; seeds and algorithms become runs).
        run_name: MLflow run name; ``None``: `sgqn fit` names it ``<algorithm>-<task>-s<seed>-<time>``,
            elsewhere ``sgqn-<time>`` (never from the seeded global RNG).
        tracking_uri: any MLflow URI (``sqlite:///…``, ``http://host:5000``); default
            ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        tags: run tags.
        log_model: also upload checkpoints as run artifacts (``"all"``: at each save; ``True``: the
            same with `EnvStepCheckpoint`'s ``save_top_k=-1``, else at the end). Off by default: checkpoints stay in the local checkpoint folder, whose absolute
            path the run records in its ``checkpoint_dir`` tag (uploading doubles the disk use; turn
            it on when the run's machine will not be reachable, e.g. with a remote tracking server).
        artifact_location: where a *new* experiment stores artifacts (default: MLflow's).
        run_id: log into an existing run (resume). Params it already holds with another value (those a
            resume may change, docs/resume.md) are not logged again (MLflow refuses that): the new value
            goes into the run's ``resumed/<param>`` tag.
    """

    def __init__(
        self,
        experiment_name: str = "sgqn",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: Literal[True, False, "all"] = False,
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        # Absolute: MLflow caches a store by its URI, and a relative sqlite one names another file after a
        # change of working directory (in-process fits).
        tracking_uri = absolute_uri(tracking_uri or default_tracking_uri())
        with store_lock(tracking_uri):  # Lightning's logger opens the store (creating a new one) here
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name,
                tracking_uri=tracking_uri,
                tags=tags,
                save_dir=None,
                log_model=log_model,
                artifact_location=artifact_location,
                run_id=run_id,
            )
        # Values that replace what the hyper-parameters say when they are logged, e.g. the resolved
        # `action_repeat` for ``None`` (set by the CLI, which knows the defaults that apply).
        self.resolved_params: dict[str, Any] = {}
        # The run name was generated (not the user's): add "-2", "-3", … if the experiment has it already.
        self.unique_name = False
        self._logged_until: dict[str, int] = {}  # resumed run: the last step of each metric it holds
        self._resumed = run_id is not None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._initialized:
            return self._mlflow_client
        # The process that owns the run: `sgqn.app.dead_runs` marks a RUNNING run KILLED once it is gone.
        owner = {"pid": str(os.getpid()), "host": socket.gethostname()}
        if self._run_id is None:
            if self._run_name is None:
                self._run_name, self.unique_name = run_name("sgqn"), True
            self.tags = {**(self.tags or {}), **owner}
            # Runs started side by side: one creates the experiment, each gets a name of its own.
            with store_lock(self._tracking_uri):
                if self.unique_name:
                    self._run_name = self._unused_name(self._run_name)
                client = super().experiment
                mark_training_experiment(client, str(self._experiment_id))
                return client
        client = super().experiment
        # Resumed: running again, under this process; `resumes` counts the interruptions.
        previous = client.get_run(str(self._run_id)).data.tags.get("resumes", "0")
        owner["resumes"] = str(int(previous) + 1 if previous.isdigit() else 1)
        for key, value in owner.items():
            client.set_tag(self._run_id, key, value)
        client.update_run(self._run_id, status="RUNNING")
        self._logged_until = logged_steps(client, str(self._run_id))
        return client

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # A resumed run recomputes, bit for bit, what it had logged between its checkpoint and the crash:
        # points at steps the run already has are dropped, so each metric step is logged once.
        self.experiment  # noqa: B018 (opens the run, and reads what a resumed run already holds)
        if self._logged_until and step is not None:
            metrics = {k: v for k, v in metrics.items() if step > self._logged_until.get(k, -1)}
            if not metrics:
                return
        super().log_metrics(metrics, step)

    def _unused_name(self, name: str) -> str:
        # Two runs of one algorithm, task and seed started in the same second would share a name.
        found = self._mlflow_client.get_experiment_by_name(self._experiment_name)
        if found is None:
            return name
        runs = self._mlflow_client.search_runs(
            [found.experiment_id], f"attributes.run_name LIKE '{name}%'", max_results=10_000
        )
        taken = {run.info.run_name for run in runs}
        return next(c for c in (name, *(f"{name}-{i}" for i in range(2, len(taken) + 3))) if c not in taken)

    def log_hyperparams(self, params: Any) -> None:
        # LightningCLI adds `_instantiator` / `_class_path` to the saved hyper-parameters: plumbing, not
        # settings of the run.
        items = dict(params) if isinstance(params, Mapping) else dict(vars(params))
        kept = {k: v for k, v in items.items() if not str(k).startswith("_")} | self.resolved_params
        if self._resumed:
            kept = self._params_unchanged(kept)
        super().log_hyperparams(kept)

    def _params_unchanged(self, params: dict[str, Any]) -> dict[str, Any]:
        # MLflow params cannot change: in a resumed run, the settings a resume may change (`sgqn fit`
        # refuses the others first) keep the value the run started with; the new one becomes a tag.
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(_convert_params(params))
        client, run_id = self.experiment, str(self.run_id)
        logged = client.get_run(run_id).data.params
        changed = {k: str(v)[:250] for k, v in flat.items() if k in logged and logged[k] != str(v)[:250]}
        for key, value in changed.items():
            client.set_tag(run_id, f"resumed/{key}", value)
        return {k: v for k, v in flat.items() if k not in changed}


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step logged for each metric of a run."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


class MLflowSaveConfig(SaveConfigCallback):
    """Store the fully resolved CLI config as `config.yaml` in the MLflow run (not in a log dir)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False  # MLflow loggers have no log dir with a sqlite/remote store
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_text(logger.run_id, text, "config.yaml")


class RecordRunId(Callback):
    """Write the MLflow run id and tracking URI into every checkpoint, so `sgqn evaluate` can log back."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                checkpoint["mlflow"] = {
                    "run_id": logger.run_id,
                    "tracking_uri": absolute_uri(logger._tracking_uri),  # resumable from another folder
                    "experiment_name": logger._experiment_name,
                }
