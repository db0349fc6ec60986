"""Run a sweep on Ray Tune: local (`ray.init()` with this machine's CPUs) or on a cluster (`--address`).

Layout of ``<root>/<name>/``: ``sweep.json`` (the parent run and the grid's fingerprint), ``tune-<time>/``
(Ray Tune's records of one invocation) and ``runs/<trial>/`` (each trial's
`sgqn fit` output folder: checkpoints, ``fit.log``, ``command.sh``, ``status.json``). On a cluster,
``root`` must be a filesystem every node mounts, so a trial retried on another node finds its checkpoint.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgqn.app.errors import ConfigError
from sgqn.app.store import default_tracking_uri, open_client, sqlite_path, store_lock
from sgqn.app.sweeps.spec import SHORTHANDS, SweepSpec, Trial
from sgqn.app.sweeps.table import SweepTable
from sgqn.app.sweeps.tracking import child_tags, create_parent_run
from sgqn.app.sweeps.trial import DONE, STATUS, run_trial


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


UNKNOWN_PARENT = "<parent run>"  # the parent run's id in a trial's tags before the run exists


def sweep_tracking_uri(spec: SweepSpec) -> str:
    """The tracking URI of the sweep's parent and trial runs, absolute."""
    return absolute_tracking_uri(spec.tracking_uri or default_tracking_uri())


# Variables of `sgqn sweep`'s environment that every trial gets, wherever it runs. A local Ray's workers
# inherit the driver's environment, but on a cluster (`--address`) a worker has the environment of
# `ray start` on its node: without these, a `--trainer.callbacks` class found through the driver's
# PYTHONPATH would fail to import in every trial (exit 2) although the preflight passed. Secrets (MLflow
# credentials) are not forwarded: Tune writes each trial's config to disk; set them where `ray start` runs.
FORWARDED_ENV = ("PYTHONPATH", "SGQN_CACHE_DIR", "SGQN_DEBUG", "MUJOCO_GL", "PYOPENGL_PLATFORM")


def forwarded_env() -> dict[str, str]:
    """The driver's values of `FORWARDED_ENV`; PYTHONPATH's entries made absolute (a trial runs in its
    own folder)."""
    env = {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}
    if "PYTHONPATH" in env:
        entries = env["PYTHONPATH"].split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(entry or ".") for entry in entries)
    return env


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
        "env": forwarded_env(),
        "poll_s": poll_s,
    }


def _trial_entry(config: dict[str, Any]) -> None:
    run_trial(config["spec"])


def fit_options() -> dict[str, Any]:
    """`sgqn fit`'s options as typed (``--model.sgqn.quantile``) → their argparse actions: its parser,
    built as `sgqn fit` builds it, nothing parsed."""
    from sgqn.app.arguments import fit_parser_of
    from sgqn.app.fit import SGQNCLI, cli_main

    class _Built(Exception):
        pass

    class _ParserOnly(SGQNCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            raise _Built(parser)

    try:
        cli_main(["fit"], cli_class=_ParserOnly)
    except _Built as built:
        return dict(fit_parser_of(built.args[0])._option_string_actions)
    raise AssertionError("the parser-only CLI always stops before parsing")  # pragma: no cover


# Options a sweep key cannot name: the parser's own, and those `sgqn fit` fills in from other options.
_NOT_SETTINGS = {"-h", "--help", "-c", "--config", "--print_config", "--help-trainer", "--seed_everything"}


def is_fit_option(key: str, actions: Mapping[str, Any]) -> bool:
    """Whether ``--<key>`` is an `sgqn fit` option: one of its options (``eval.modes``), one appended to
    (``trainer.callbacks+``), or an argument of a class given by its path (``trainer.logger.init_args.tags``,
    ``trainer.callbacks.init_args.x``), which `sgqn fit` itself checks once the class is known."""
    base = key.removesuffix("+")
    action = actions.get(f"--{base}")
    if action is not None:
        return f"--{base}" not in _NOT_SETTINGS and type(action).__name__ not in (
            "ActionLink",
            "_ActionConfigLoad",
        )
    parts = base.split(".")
    # an option that takes a class path has a `--<option>.help CLASS` action
    return any(f"--{'.'.join(parts[:end])}.help" in actions for end in range(1, len(parts)))


def check_keys(spec: SweepSpec, actions: Mapping[str, Any]) -> None:
    """Every key of the sweep's grid, overrides and algorithm_overrides (and every `sgqn fit` option on the
    command line) is a shorthand (algorithm, task, seed) or an `sgqn fit` option; an unknown one fails
    naming the sweep file, the key and the near names (a typo would otherwise become ``--seeds 0``)."""
    from sgqn.app.arguments import renamed_option, suggest_options

    options = [o for o in actions if o not in _NOT_SETTINGS and is_fit_option(o[2:], actions)]
    for where, key in spec.option_keys():
        if key in SHORTHANDS or is_fit_option(key, actions):
            continue
        renamed = renamed_option(key)
        if where == "option":  # on the `sgqn sweep` command line (a mistyped sweep flag fails before)
            near = suggest_options(f"--{key}", options)
            hint = renamed or (f"did you mean {', '.join(near)}?" if near else "")
            raise ConfigError(
                f"--{key} is neither an `sgqn sweep` option nor an `sgqn fit` option"
                + (f" ({hint})" if hint else "; see `sgqn sweep --help` and `sgqn fit --help`")
            )
        near = difflib.get_close_matches(key, list(SHORTHANDS), n=2, cutoff=0.6)
        near += [o[2:] for o in suggest_options(f"--{key}", options)]
        if renamed:
            hint = f" ({renamed.replace('--', '')})"
        elif near:
            hint = f" (did you mean {', '.join(map(repr, dict.fromkeys(near)))}?)"
        else:
            hint = "; see `sgqn fit --help` for the options"
        raise ConfigError(
            f"{spec.file}: {where} {key!r} is not a sweep field (algorithm, task, seed) or an `sgqn fit` "
            f"option{hint}"
        )


def preflight(spec: SweepSpec, trials: list[Trial], folder: Path, uri: str) -> None:
    """The sweep's keys, then every trial's `sgqn fit` options, checked as `sgqn fit` checks them, before
    Ray or any MLflow run exists (and by `--dry-run`, which then prints the commands): a typo fails in
    seconds, naming the sweep file, not once per trial after the cluster has started. Seeds do not change
    what is valid, so one trial per distinct set of other options is checked."""
    check_keys(spec, fit_options())
    with _quiet_info():  # Lightning's "Seed set to 0" of each check
        _check_trials(spec, trials, folder, uri)


@contextlib.contextmanager
def _quiet_info() -> Iterator[None]:
    before = logging.root.manager.disable
    logging.disable(max(before, logging.INFO))
    try:
        yield
    finally:
        logging.disable(before)


def _check_trials(spec: SweepSpec, trials: list[Trial], folder: Path, uri: str) -> None:
    from sgqn.app.fit import check_fit_args

    seen: set[tuple[Any, ...]] = set()
    for trial in trials:
        key = (trial.configs, tuple(o for o in trial.options if o[0] != "data.seed"))
        if key in seen:
            continue
        seen.add(key)
        where = f"{spec.file}: trial {trial.name}"
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed):
                # the trial's own command line (its parent run's id in its tags is not known yet)
                check_fit_args(
                    trial_config(spec, trial, folder / "runs" / trial.name, UNKNOWN_PARENT, uri, 0)["argv"]
                )
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
        except SystemExit as exit_:  # a parse error, printed as `sgqn: error: …`
            lines = [x for x in printed.getvalue().splitlines() if x.startswith("sgqn: error: ")]
            if exit_.code != 2 or not lines:
                sys.stderr.write(printed.getvalue())
                raise
            raise ConfigError(f"{where}: {lines[0].removeprefix('sgqn: error: ')}") from None
        sys.stderr.write(printed.getvalue())  # warnings of a good trial


def open_sweep(spec: SweepSpec, trials: list[Trial], folder: Path, uri: str) -> tuple[str, bool]:
    """The parent run of this sweep folder (continued), or a new one. Returns (run id, continued)."""
    client = open_client(uri)
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
    with store_lock(uri):  # the experiment may be created by a fit started beside the sweep
        run_id = create_parent_run(client, spec.experiment_name, spec.name, records, spec.text, params)
    folder.mkdir(parents=True, exist_ok=True)
    state_file.write_text(
        json.dumps({"fingerprint": fingerprint, "parent_run_id": run_id, "tracking_uri": uri})
    )
    return run_id, False


def _root_cause(err: BaseException) -> str:
    """``: <the last line of the innermost cause>``: why Ray could not connect (e.g. the head's token
    authentication refused this process), which Ray wraps in a traceback's text; ``""`` if none."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f": {lines[-1]}" if inner is not err and lines else ""


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
    from ray import tune

    started = time.perf_counter()
    folder = Path(spec.root).resolve() / spec.name
    uri = sweep_tracking_uri(spec)
    if address and sqlite_path(uri) is not None:
        print(
            "sgqn sweep: warning: a sqlite tracking store on a shared filesystem is not safe for many "
            "writers on several machines; start `mlflow server` and pass --tracking-uri http://HOST:5000",
            file=sys.stderr,
        )
    if not address and os.environ.get("RAY_ADDRESS"):
        print(
            f"sgqn sweep: RAY_ADDRESS is set ({os.environ['RAY_ADDRESS']}) but --address is not: running on "
            "a new Ray on this machine; pass --address auto to use that cluster",
            file=sys.stderr,
        )
    trials = spec.trials()
    preflight(spec, trials, folder, uri)
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
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except ConnectionError as err:
                raise ConfigError(f"--address {address}: {err}{_root_cause(err)}") from err
        else:
            ray.init(
                # a new Ray on this machine, even where RAY_ADDRESS is set or `ray start` ran here (Ray
                # would connect to that cluster, then refuse `num_cpus`)
                address="local",
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
    client = open_client(uri)
    client.log_metric(parent_run_id, "sweep/trials_finished", len(finished))
    client.log_metric(parent_run_id, "sweep/trials_failed", len(failed))
    client.log_metric(parent_run_id, "sweep/wall_seconds", seconds)
    client.set_terminated(parent_run_id, status="FINISHED" if not failed else "FAILED")
    return SweepOutcome(parent_run_id, finished, failed, seconds, folder)
