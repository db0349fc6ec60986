"""MLflow tracking: a logger with working defaults and the resolved config saved into the run."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("sgqn.app.tracking")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3 refuses the plain-folder store (`file:./mlruns`)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` tracking URI (relative to the working directory), else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def absolute_uri(uri: str) -> str:
    """A sqlite URI with its database's absolute, normalised path (``sqlite:///mlflow.db`` in /work →
    ``sqlite:////work/mlflow.db``): one store, one name. Other URIs unchanged."""
    path = sqlite_path(uri)
    if path is None:
        return uri
    query = uri.partition("?")[1] + uri.partition("?")[2]
    return f"sqlite:///{path.expanduser().resolve()}{query}"


def missing_store(uri: str) -> str | None:
    """The absolute URI of a sqlite store whose file does not exist (opening it would create an empty
    one), else None: commands that only read runs refuse it instead of leaving an empty database."""
    path = sqlite_path(uri)
    return absolute_uri(uri) if path is not None and not path.is_file() else None


def holds_run(uri: str, run_id: str) -> bool:
    """Does the store at `uri` hold the run `run_id`? (A missing sqlite file is not created.)"""
    from mlflow.exceptions import MlflowException

    if missing_store(uri):
        return False
    try:
        open_client(uri).get_run(run_id)
    except MlflowException:
        return False
    return True


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock shared by every process using the sqlite store at `uri` (``flock`` on
    ``<database>.lock`` beside it; a no-op for other stores).

    MLflow creates a new sqlite store by running its schema migrations, with no lock: two `sgqn fit`
    started at the same moment in a new folder both migrated ``mlflow.db`` and one crashed (alembic's
    "Online migration expected to match one row"). They, and the creation of an experiment and of a
    run's unique name, happen under this lock.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path = path.expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does for the database
        lock = path.with_name(path.name + ".lock").open("a")
    except OSError:  # a read-only folder: nothing can be created there, and there is nothing to guard
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_client(uri: str | None = None) -> MlflowClient:
    """An `MlflowClient` on `uri` (default `default_tracking_uri`; a sqlite path made absolute); a new
    sqlite store is created (its schema migrated) by one process at a time (`store_lock`)."""
    from mlflow import MlflowClient

    uri = absolute_uri(uri or default_tracking_uri())  # (MLflow caches a store by its URI)
    with store_lock(uri):
        return MlflowClient(tracking_uri=uri)


# --------------------------------------------------------------------------- run names, tags, params


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
                return super().experiment
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


# --------------------------------------------------------------------------- checkpoints of a run

CHECKPOINT_DIR_TAG = "checkpoint_dir"  # absolute path of the run's local checkpoint folder


def experiment_ids(client: MlflowClient, experiment: str | None = None) -> list[str]:
    """The id of the experiment named `experiment` (LookupError if none), or of every experiment."""
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} at {absolute_uri(client.tracking_uri)}")
    return [found.experiment_id]


def resolve_run(client: MlflowClient, run: str, experiment: str | None = None) -> Run:
    """The MLflow run with id `run`, else the newest run named `run` (in `experiment`, or in any)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run)
    except MlflowException:
        pass  # not an id: look it up by name
    name = run.replace("'", "\\'")
    runs = client.search_runs(
        experiment_ids(client, experiment),
        f"attributes.run_name = '{name}'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise LookupError(
            f"no MLflow run with id or name {run!r} in {where} at {absolute_uri(client.tracking_uri)}"
        )
    if len(runs) > 1:
        log.warning("%d runs are named %r; using the newest, %s", len(runs), run, runs[0].info.run_id)
    return runs[0]


def _artifact_files(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    files: list[str] = []
    for item in client.list_artifacts(run_id, path):
        files += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return files


def find_checkpoint(
    run: str,
    tracking_uri: str | None = None,
    which: str = "last",
    experiment: str | None = None,
    download_dir: str | Path | None = None,
) -> Path:
    """A local path to one checkpoint of an MLflow run (what `sgqn evaluate --run` and resuming use).

    Looks in the folder the run's ``checkpoint_dir`` tag names (set when training starts), then among
    the run's artifacts (uploaded with ``log_model``), which are downloaded.

    Args:
        run: run id or run name (the newest run of that name).
        tracking_uri: default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        which: ``"last"`` (``last.ckpt``) or a checkpoint file name such as ``"agent_steps=100000"``.
        experiment: look names up in this experiment only.
        download_dir: where artifacts go (default ``<tmp>/sgqn-checkpoints/<run id>``).

    Raises:
        LookupError: no such run.
        FileNotFoundError: the run has the checkpoint neither in its folder nor as an artifact.
    """
    client = open_client(tracking_uri)
    found = resolve_run(client, run, experiment)
    run_id = found.info.run_id
    filename = which if which.endswith(".ckpt") else f"{which}.ckpt"
    folder = found.data.tags.get(CHECKPOINT_DIR_TAG)
    if folder and (Path(folder) / filename).is_file():
        return Path(folder) / filename
    uploaded = sorted(p for p in _artifact_files(client, run_id) if Path(p).name == filename)
    if uploaded:
        target = Path(download_dir or Path(tempfile.gettempdir()) / "sgqn-checkpoints" / run_id)
        target.mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, uploaded[0], str(target)))
    raise FileNotFoundError(
        f"run {run_id} ({found.info.run_name}) has no {filename}: not in its checkpoint folder "
        f"{folder or '(no ' + CHECKPOINT_DIR_TAG + ' tag)'} and not among its artifacts"
    )
