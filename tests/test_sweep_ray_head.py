"""`sgqn sweep --address auto` against a real Ray head started with `ray start --head`, as on a cluster's head
node: a tiny sweep whose trials run in the head's workers (with the head's environment, not the driver's),
one of which is SIGKILLed mid-run and retried from its checkpoint into the same MLflow run; then the table.

The head is the test's own: its own temporary folder (sockets, logs, `ray_current_cluster`), a random GCS
port, its own auth token, and the driver is pointed at it by RAY_ADDRESS, so neither the head nor the sweep
meets another Ray on the machine. It is stopped as `ray stop --force` stops one (SIGKILL), but only its own
processes: `ray stop` kills every Ray process on the machine, other users' heads and local sweeps included.
"""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from sgqn.app.sweeps.tracking import KIND_SWEEP, KIND_TAG, PARENT_TAG, TRIAL_TAG

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "conf" / "tiny.yaml"
RAY = Path(sys.executable).parent / "ray"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Head:
    address: str  # the GCS address, host:port
    folder: Path  # Ray's temporary folder of this head (`--temp-dir`)
    env: dict[str, str]  # what a process needs to join it: the token authentication settings
    session: int  # the session id of `ray start`, shared by the processes it started


def _head_processes(head: Head) -> list[psutil.Process]:
    """The head's processes: those of `ray start`'s session, those naming its folder (gcs_server, raylet,
    dashboard, monitors), and their descendants (the workers, each trial's `sgqn fit`)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == head.session or str(head.folder) in " ".join(proc.cmdline()):
                found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update({child.pid: child for child in proc.children(recursive=True)})
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop(head: Head) -> None:
    """What `ray stop --force` does (SIGKILL to Ray's processes), to this head's processes only."""
    procs = _head_processes(head)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


@contextlib.contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2) -> Iterator[Head]:
    """`ray start --head` in a new temporary folder, stopped (and the folder removed) on the way out."""
    # Ray's unix sockets live under the folder (a path of at most 107 bytes): a short one, not tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="sgqn-ray-", dir="/tmp"))
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes, here not in ~/.ray
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    command = [
        str(RAY), "start", "--head", "--num-cpus", str(num_cpus), "--disable-usage-stats",
        "--temp-dir", str(folder / "ray"), "--port", "0", "--include-dashboard", "false",
        "--dashboard-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
    ]  # fmt: skip
    start = subprocess.Popen(
        command,
        cwd=folder,
        env=env | auth,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the head's processes share this session: `_head_processes`
    )
    head = Head("", folder / "ray", auth, start.pid)
    try:
        output, _ = start.communicate(timeout=180)
        assert start.returncode == 0, output
        head.address = (head.folder / "ray_current_cluster").read_text().strip()
        assert head.address, output
        yield head
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            start.kill()
        _stop(head)
        shutil.rmtree(folder, ignore_errors=True)


def sweep_file(folder: Path) -> Path:
    path = folder / "head_sweep.yaml"
    path.write_text(
        "name: head\n"
        "experiment_name: head_sweep\n"
        f"config: {TINY}\n"
        "grid: {algorithm: [sac, sgqn], task: [cartpole_balance], seed: [0]}\n"
        "overrides:\n"
        "  data.num_agent_steps: 60\n"
        "  data.init_steps: 10\n"
        "  eval.every_agent_steps: 20\n"
        "  eval.modes: [train]\n"
        "  eval.saliency_every_evals: 0\n"
        "  eval.video_every_evals: 0\n"
        "  checkpoint.every_agent_steps: 20\n"
        "  progress.every_agent_steps: 10\n"
        "resources: {cpu: 1}\n"
        "max_failures: 2\n"
    )
    return path


def _user_env() -> dict[str, str]:
    """A shell's environment, without what the test run itself sets for Ray, MLflow or imports."""
    drop = {"MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PYTHONPATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"OMP_NUM_THREADS": "1"}


def _fits_under(folder: Path) -> list[str]:
    """`sgqn fit` processes still writing under `folder` (orphans of a killed worker)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            line = " ".join(proc.cmdline())
            if "sgqn" in line and " fit " in line and str(folder) in line:
                found.append(line)
    return found


def test_a_sweep_on_a_ray_head_retries_a_killed_worker_from_its_checkpoint(tmp_path: Path) -> None:
    path = sweep_file(tmp_path)
    marker = tmp_path / "killed"
    killer = [  # the first trial to reach 30 agent steps SIGKILLs its Ray worker; its last checkpoint: 20
        "--trainer.callbacks+=sweep_killer.KillWorkerOnceRecordingStarts",
        "--trainer.callbacks.init_args.agent_steps=30",
        f"--trainer.callbacks.init_args.marker={marker}",
    ]
    # The head runs in another folder with the user's environment: the trials find the killer callback
    # only through the driver's PYTHONPATH, which `sgqn sweep` forwards to them.
    with ray_head(_user_env()) as head:
        env = _user_env() | head.env | {"RAY_ADDRESS": head.address, "PYTHONPATH": str(REPO / "tests")}
        command = [sys.executable, "-m", "sgqn", "sweep", "-c", str(path), "--address", "auto"]
        done = subprocess.run(
            [*command, "--poll-seconds", "1", *killer],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "2 trials finished, 0 failed" in done.stdout, done.stdout[-3000:]
        assert _fits_under(tmp_path) == []  # the killed worker's `sgqn fit` died with it
        # every trial ran in a worker of this head (its worker's log is in the head's session)
        logs = {
            p.name.rpartition("_")[2] for p in head.folder.glob("session_latest/logs/python-core-worker-*")
        }
        runs_dir = tmp_path / "sweeps" / "head" / "runs"
        for trial in runs_dir.iterdir():
            assert f"{(trial / 'worker.pid').read_text()}.log" in logs, (trial.name, logs)
        # Without --address the sweep runs on a new local Ray, though RAY_ADDRESS names this head (Ray would
        # join the head, then refuse num_cpus); here it re-runs nothing: both trials are finished.
        again = subprocess.run(
            [*command[:-2], "--num-cpus", "1", *killer],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "(2 already finished)" in again.stdout and "but --address is not" in again.stderr
        assert sum(1 for _ in runs_dir.glob("*/attempt-*")) == 3
    assert _head_processes(head) == [] and not head.folder.exists()

    killed = marker.read_text()
    assert {p.name for p in runs_dir.iterdir()} == {"sac-cartpole_balance-s0", "sgqn-cartpole_balance-s0"}
    # the killed trial ran twice, the second time from its step-20 checkpoint; the other once, from 0
    for trial in runs_dir.iterdir():
        twice = trial.name == killed
        assert sorted(p.name for p in trial.glob("attempt-*")) == ["attempt-1", "attempt-2"][: 1 + twice]
        assert (trial / "starts.txt").read_text().split() == (["0", "20"] if twice else ["0"]), trial.name
    second = (runs_dir / killed / "fit.log").read_text().split("=== attempt 2")[1]
    assert "sgqn: resuming" in second and "last.ckpt" in second
    assert "PYTHONPATH=" in (runs_dir / killed / "command.sh").read_text()

    # one MLflow run per trial, FINISHED, nested under the sweep's; the retry continued the killed one
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("head_sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == KIND_SWEEP]
    children = {r.data.tags[TRIAL_TAG]: r for r in runs if PARENT_TAG in r.data.tags}
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["sweep/trials_finished"] == 2
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags[PARENT_TAG] == parents[0].info.run_id
        assert run.data.tags.get("resumes", "0") == ("1" if name == killed else "0")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "agent/steps")]
        assert steps == [10, 20, 30, 40, 50, 60], (name, steps)  # each once: continued, not restarted
        evals = [m.step for m in client.get_metric_history(run.info.run_id, "eval/train/return_mean")]
        assert evals == [20, 40, 60], (name, evals)
    assert f"(MLflow run {children[killed].info.run_id})" in second  # the same run, reopened

    # the table: every trial present and complete
    report = subprocess.run(
        [sys.executable, "-m", "sgqn", "report", "--sweep", "head", "--out", str(tmp_path / "report")],
        cwd=tmp_path, env=_user_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "All 2 trials are complete." in (tmp_path / "report" / "table.md").read_text()
    with open(tmp_path / "report" / "table.csv", newline="") as file:
        rows = [r for r in csv.DictReader(file) if r.get("metric", "return") == "return"]
    cells = {(r["task"], r["method"], r["mode"]): (r["n_seeds"], r["n_expected"], r["seeds"]) for r in rows}
    assert cells == {
        ("cartpole_balance", "sac", "train"): ("1", "1", "0"),
        ("cartpole_balance", "sgqn", "train"): ("1", "1", "0"),
    }
