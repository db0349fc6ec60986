"""Finding MLflow runs by id or name, and a run's checkpoints (what `sgqn evaluate --run` and a resume
read)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sgqn.app.store import absolute_uri, open_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("sgqn.app.runs")

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
