"""How a sweep is laid out in MLflow: what `sgqn sweep` writes and `sgqn report` reads.

- One **parent run** per sweep, in the sweep's experiment, tagged ``sgqn_kind=sweep``, ``sweep_name`` and
  ``sweep_id`` (= its own run id). Artifact ``sweep/trials.json``: the trials the grid expands to (one
  dict per trial: ``trial``, ``algorithm``, ``task``, ``seed``, ``num_agent_steps``, ``overrides``), and
  ``sweep/sweep.yaml``, the sweep file as given.
- One **child run** per trial: a normal `sgqn fit` run in the same experiment, additionally tagged
  ``mlflow.parentRunId`` (MLflow's nesting: the UI shows it under the parent), ``sweep_id``,
  ``sweep_name`` and ``sweep_trial`` (the trial's name, e.g. ``sgqn-cartpole_swingup-s0``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sgqn.app.runs import experiment_ids
from sgqn.app.tracking import git_commit, mark_training_experiment

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

KIND_TAG, KIND_SWEEP = "sgqn_kind", "sweep"
SWEEP_ID_TAG, SWEEP_NAME_TAG, TRIAL_TAG = "sweep_id", "sweep_name", "sweep_trial"
PARENT_TAG = "mlflow.parentRunId"
TRIALS_ARTIFACT, SWEEP_FILE_ARTIFACT = "sweep/trials.json", "sweep/sweep.yaml"


def child_tags(parent_run_id: str, sweep_name: str, trial: str) -> dict[str, str]:
    """The tags that make a `sgqn fit` run a trial of a sweep."""
    return {
        PARENT_TAG: parent_run_id,
        SWEEP_ID_TAG: parent_run_id,
        SWEEP_NAME_TAG: sweep_name,
        TRIAL_TAG: trial,
    }


def create_parent_run(
    client: MlflowClient,
    experiment_name: str,
    sweep_name: str,
    trials: Sequence[dict[str, Any]],
    sweep_yaml: str,
    params: dict[str, Any] | None = None,
) -> str:
    """Create the sweep's parent run (RUNNING) with its expected trials; returns its run id."""
    found = client.get_experiment_by_name(experiment_name)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment_name)
    mark_training_experiment(client, experiment_id)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        experiment_id,
        run_name=f"sweep-{sweep_name}-{stamp}",
        tags={KIND_TAG: KIND_SWEEP, SWEEP_NAME_TAG: sweep_name, "git_commit": git_commit()},
    )
    run_id = run.info.run_id
    client.set_tag(run_id, SWEEP_ID_TAG, run_id)
    client.log_text(run_id, json.dumps(list(trials), indent=1), TRIALS_ARTIFACT)
    client.log_text(run_id, sweep_yaml, SWEEP_FILE_ARTIFACT)
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    return run_id


def find_sweep(client: MlflowClient, sweep: str, experiment: str | None = None) -> Run:
    """The parent run whose id is `sweep`, else the newest parent run named `sweep` (its ``sweep_name``)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(sweep)
        if run.data.tags.get(KIND_TAG) == KIND_SWEEP:
            return run
    except MlflowException:
        pass  # not a run id: a sweep name
    ids = experiment_ids(client, experiment)
    name = sweep.replace("'", "\\'")
    runs = client.search_runs(
        ids,
        f"tags.{KIND_TAG} = '{KIND_SWEEP}' AND tags.{SWEEP_NAME_TAG} = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise LookupError(f"no sweep with id or name {sweep!r} at {client.tracking_uri}")
    return runs[0]


def expected_trials(client: MlflowClient, parent: Run) -> list[dict[str, Any]]:
    """The trials the sweep's grid expands to, as recorded in its parent run."""
    text = client.download_artifacts(parent.info.run_id, TRIALS_ARTIFACT)
    with open(text) as file:
        return list(json.load(file))


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """Every trial run of the sweep (all statuses), oldest first."""
    return list(
        client.search_runs(
            [parent.info.experiment_id],
            f"tags.{SWEEP_ID_TAG} = '{parent.info.run_id}' AND tags.{TRIAL_TAG} != ''",
            order_by=["attributes.start_time ASC"],
            max_results=50_000,
        )
    )
