"""Run a sweep on Ray Tune: local (`ray.init()` with this machine's CPUs) or on a cluster (`--address`).

Layout of ``<root>/<name>/``: ``sweep.json`` (the parent run and the grid's fingerprint), ``tune-<time>/``
(Ray Tune's records of one invocation) and ``runs/<trial>/`` (each trial's
`sgqn fit` output folder: checkpoints, ``fit.log``, ``command.sh``, ``status.json``). On a cluster,
``root`` must be a filesystem every node mounts, so a trial retried on another node finds its checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgqn.app.errors import ConfigError
from sgqn.app.sweeps.spec import SweepSpec, Trial
from sgqn.app.sweeps.table import SweepTable
from sgqn.app.sweeps.tracking import child_tags, create_parent_run
from sgqn.app.sweeps.trial import DONE, STATUS, run_trial
from sgqn.app.tracking import default_tracking_uri, sqlite_path


@dataclass
class SweepOutcome:
    parent_run_id: str
    finished: list[str]
    failed: list[str]
    seconds: float
    folder: Path


def absolute_tracking_uri(uri: str) -> str:
    """Trials run in their own folders (and, on a cluster, machines): a relative sqlite path is made
    absolute against the directory `sgqn sweep` runs in."""
    path = sqlite_path(uri)
    return uri if path is None or path.is_absolute() else f"sqlite:///{path.resolve()}"


def trial_config(
    spec: SweepSpec, trial: Trial, folder: Path, parent_run_id: str, uri: str, poll_s: float
) -> dict:
    tags = child_tags(parent_run_id, spec.name, trial.name)
    argv = trial.argv(folder)
    argv += [
        "--trainer.logger.init_args.experiment_name", spec.experiment_name,
        "--trainer.logger.init_args.tracking_uri", uri,
        "--trainer.logger.init_args.tags", json.dumps(tags),
        "--progress.status_file", str(folder / STATUS),
    ]  # fmt: skip
    return {
        "trial": trial.name,
        "argv": argv,
        "folder": str(folder),
        "cpus": spec.resources["cpu"],
        "tracking_uri": uri,
        "poll_s": poll_s,
    }


def _trial_entry(config: dict[str, Any]) -> None:
    run_trial(config["spec"])


def preflight(trials: list[Trial], folder: Path) -> None:
    """Every trial's `sgqn fit` options checked as `sgqn fit` checks them, before Ray or any MLflow run
    exists: a typo fails in seconds, not once per trial after the cluster has started. Seeds do not
    change what is valid, so one trial per distinct set of other options is checked."""
    from sgqn.app.fit import check_fit_args

    seen: set[tuple[Any, ...]] = set()
    for trial in trials:
        key = (trial.configs, tuple(o for o in trial.options if o[0] != "data.seed"))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_fit_args(trial.argv(folder / "runs" / trial.name))
        except ConfigError as err:
            raise ConfigError(f"trial {trial.name}: {err}") from err


def open_sweep(spec: SweepSpec, trials: list[Trial], folder: Path, uri: str) -> tuple[str, bool]:
    """The parent run of this sweep folder (continued), or a new one. Returns (run id, continued)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    state_file = folder / "sweep.json"
    fingerprint = spec.fingerprint(trials)
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{folder} holds sweep {spec.name!r} with a different grid or base config; "
                "give the sweep another `name` (or --root), or delete that folder to start over"
            )
        client.update_run(state["parent_run_id"], status="RUNNING")
        return state["parent_run_id"], True
    records = [t.record() for t in trials]
    params = {
        "sweep_name": spec.name,
        "trials": len(records),
        "grid": json.dumps(spec.grid),
        "resources": json.dumps(spec.resources),
        "max_failures": spec.max_failures,
    }
    run_id = create_parent_run(client, spec.experiment_name, spec.name, records, spec.text, params)
    folder.mkdir(parents=True, exist_ok=True)
    state_file.write_text(
        json.dumps({"fingerprint": fingerprint, "parent_run_id": run_id, "tracking_uri": uri})
    )
    return run_id, False


def run_sweep(
    spec: SweepSpec,
    address: str | None = None,
    max_concurrent: int | None = None,
    num_cpus: int | None = None,
    poll_s: float = 5.0,
    print_every_s: float = 30.0,
) -> SweepOutcome:
    """Run (or continue) every trial of `spec` and close its MLflow parent run."""
    import ray
    from mlflow import MlflowClient
    from ray import tune

    started = time.perf_counter()
    folder = Path(spec.root).resolve() / spec.name
    uri = absolute_tracking_uri(spec.tracking_uri or default_tracking_uri())
    if address and sqlite_path(uri) is not None:
        print(
            "sgqn sweep: warning: a sqlite tracking store on a shared filesystem is not safe for many "
            "writers on several machines; start `mlflow server` and pass --tracking-uri http://HOST:5000",
            file=sys.stderr,
        )
    trials = spec.trials()
    preflight(trials, folder)
    parent_run_id, continued = open_sweep(spec, trials, folder, uri)
    configs = [trial_config(spec, t, folder / "runs" / t.name, parent_run_id, uri, poll_s) for t in trials]
    done_before = sum((Path(c["folder"]) / DONE).exists() for c in configs)
    print(
        f"sgqn sweep {spec.name}: {len(trials)} trials ({done_before} already finished), MLflow parent run "
        f"{parent_run_id} in experiment {spec.experiment_name!r} at {uri}; folder {folder}"
        + (" (continued)" if continued else ""),
        flush=True,
    )
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own table (SweepTable) instead of Tune's
    started_ray = not ray.is_initialized()
    if started_ray:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    try:
        resources = {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}
        trainable = tune.with_resources(_trial_entry, resources)
        table = SweepTable(spec.name, [t.name for t in trials], print_every_s=print_every_s)
        # A fresh Tune experiment per invocation: what carries over is each trial's own folder (its
        # `done.json`, or its last.ckpt that `--resume auto` continues from), not Tune's pickled state,
        # which ties a continuation to the exact code and callbacks of the interrupted driver.
        tuner = tune.Tuner(
            trainable,
            param_space={"spec": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent or spec.max_concurrent,
                trial_name_creator=lambda t: t.config["spec"]["trial"],
                trial_dirname_creator=lambda t: t.config["spec"]["trial"],
            ),
            run_config=tune.RunConfig(
                name=time.strftime("tune-%Y%m%d-%H%M%S"),
                storage_path=str(folder),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                callbacks=[table],
                verbose=0,
            ),
        )
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    finished = [c["trial"] for c in configs if (Path(c["folder"]) / DONE).exists()]
    failed = [c["trial"] for c in configs if c["trial"] not in finished]
    seconds = time.perf_counter() - started
    client = MlflowClient(tracking_uri=uri)
    client.log_metric(parent_run_id, "sweep/trials_finished", len(finished))
    client.log_metric(parent_run_id, "sweep/trials_failed", len(failed))
    client.log_metric(parent_run_id, "sweep/wall_seconds", seconds)
    client.set_terminated(parent_run_id, status="FINISHED" if not failed else "FAILED")
    return SweepOutcome(parent_run_id, finished, failed, seconds, folder)
