"""One trial on a Ray worker: the plain `sgqn fit` command in a child process, resumed after a failure.

The child is the exact command a user would type (written to ``<trial folder>/command.sh``), so a trial
can be re-run alone by hand. It is a separate process (not `cli_main` in the worker) so that torch's
thread count, Lightning's and MLflow's global state and a crash stay the trial's own; it dies with its
worker (``PR_SET_PDEATHSIG``), so a killed worker leaves no orphan that keeps writing the trial's folder.
Ray retries a failed trial (``max_failures``) by calling this again: ``--resume auto`` then continues
from the trial's own ``last.ckpt`` through the exact-resume path.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DONE, FAILED = "done.json", "failed.json"  # markers in the trial folder
STATUS = "status.json"  # written by the child's `TrainingProgress(status_file=…)`
# Exit statuses of `sgqn fit` that a retry would only repeat: a configuration error, a diverged run.
FINAL_EXIT_CODES = {2: "configuration error", 3: "training diverged"}


class TrialFailed(RuntimeError):
    pass


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def trial_env(cpus: float, tracking_uri: str, forwarded: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the worker's, with the driver's `forwarded` variables (on a cluster the
    worker's is that of `ray start` on its node), one torch/OpenMP thread per CPU the trial holds (two
    2-thread runs on 2 cores crawl: oversubscription), the sweep's tracking store, headless rendering."""
    threads = str(max(1, int(cpus)))
    env = dict(os.environ)
    env.update(forwarded or {})
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, MLFLOW_TRACKING_URI=tracking_uri)
    env.setdefault("MUJOCO_GL", "egl")
    return env


def write_command(
    folder: Path, argv: list[str], env: dict[str, str], forwarded: tuple[str, ...] = ()
) -> None:
    keep = (*forwarded, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MLFLOW_TRACKING_URI", "MUJOCO_GL")
    keep = tuple(dict.fromkeys(keep))
    words = [f"{k}={shlex.quote(env[k])}" for k in keep if k in env] + [shlex.quote(w) for w in argv]
    (folder / "command.sh").write_text(
        "#!/usr/bin/env bash\n# re-run this trial alone\n" + " ".join(words) + "\n"
    )


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable. `config`: ``trial`` (its name), ``argv`` (`sgqn fit` arguments),
    ``folder`` (the trial's own output folder), ``cpus``, ``tracking_uri``, ``env`` (the driver's
    variables to set) and ``poll_s``."""
    from ray import tune

    folder = Path(config["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    done = read_json(folder / DONE)
    if done is not None:  # finished before the sweep was interrupted: report, do not re-run
        tune.report({**done, "done": True})
        return
    failed = read_json(folder / FAILED)
    if failed is not None:
        raise TrialFailed(
            f"{config['trial']}: {failed['reason']} (exit {failed['exit_code']}); see {failed['log']}"
        )

    argv = [sys.executable, "-m", "sgqn", "fit", *config["argv"]]
    forwarded = dict(config.get("env", {}))
    env = trial_env(config["cpus"], config["tracking_uri"], forwarded)
    write_command(folder, ["sgqn", "fit", *config["argv"]], env, tuple(forwarded))
    (folder / "worker.pid").write_text(str(os.getpid()))
    log_path = folder / "fit.log"
    status_path = folder / STATUS
    attempt = sum(1 for _ in folder.glob("attempt-*")) + 1
    (folder / f"attempt-{attempt}").touch()  # how many times this trial was started
    last: dict[str, Any] | None = None
    with open(log_path, "a") as log:
        log.write(f"\n=== attempt {attempt}, {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}\n")
        log.flush()
        child = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, preexec_fn=_die_with_parent
        )
        while True:
            try:
                code = child.wait(timeout=config["poll_s"])
            except subprocess.TimeoutExpired:
                code = None
            status = read_json(status_path)
            if status is not None and status != last:
                last = status
                tune.report({**status, "attempt": attempt, "done": False})
            if code is not None:
                break
    if code != 0:
        tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
        if code in FINAL_EXIT_CODES:
            record = {"exit_code": code, "reason": FINAL_EXIT_CODES[code], "log": str(log_path)}
            (folder / FAILED).write_text(json.dumps(record))
        raise TrialFailed(
            f"{config['trial']}: `sgqn fit` exited with {code}; last lines of {log_path}: {tail}"
        )
    final = {**(read_json(status_path) or {}), "attempt": attempt}
    (folder / DONE).write_text(json.dumps(final))
    tune.report({**final, "done": True})
