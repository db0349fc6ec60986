"""The MLflow store (issue 23): runs started side by side in a new folder create it once and all finish;
commands that only read runs never create it."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import TINY, all_runs
from sgqn.app.cli import main
from sgqn.app.store import open_client, store_lock

REPO = Path(__file__).resolve().parents[1]


def _open_store_and_experiment(folder: str, start: float) -> None:
    time.sleep(max(0.0, start - time.time()))  # all at once
    client = open_client(f"sqlite:///{folder}/mlflow.db")
    with store_lock(client.tracking_uri):  # as `SGQNMLFlowLogger` creates its experiment
        if client.get_experiment_by_name("side") is None:
            client.create_experiment("side")


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    # Without the lock, MLflow's schema migrations of the new database run in every process at once and
    # they crash (alembic: "Online migration expected to match one row", "table _alembic_tmp_… exists").
    context = multiprocessing.get_context("fork")
    start = time.time() + 1.0
    workers = [
        context.Process(target=_open_store_and_experiment, args=(str(tmp_path), start)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * len(workers)
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "side"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


@pytest.mark.slow
def test_fits_started_together_in_an_empty_folder_all_finish(tmp_path: Path) -> None:
    # The README starts seeds side by side; here four of the same seed (their names must differ too).
    command = [sys.executable, "-m", "sgqn", "fit", "-c", TINY, "--data.num_agent_steps", "4"]
    command += ["--data.init_steps", "2", "--eval.at_end", "false", "--eval.every_agent_steps", "0"]
    command += ["--eval.saliency_every_evals", "0", "--checkpoint.every_agent_steps", "0"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
    fits = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [fit.communicate(timeout=600)[1] for fit in fits]
    assert [fit.returncode for fit in fits] == [0] * 4, "\n".join(e[-3000:] for e in errors)
    runs = all_runs(tmp_path)
    assert len({r.info.run_id for r in runs}) == len({r.info.run_name for r in runs}) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize(
    "command",
    [["evaluate", "--run", "nosuch"], ["report", "--sweep", "nosuch"], ["report", "--experiment", "x"]],
    ids=["evaluate", "report-sweep", "report-experiment"],
)
def test_reading_commands_create_no_store_and_name_its_absolute_uri(
    command: list[str], store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("sgqn: error: ")]
    assert f"no MLflow store at sqlite:///{store.resolve()}/mlflow.db " in line
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert list(store.iterdir()) == []  # no mlflow.db, no mlruns/, no lock


def test_an_unknown_run_in_an_existing_store_names_its_absolute_uri(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_client(f"sqlite:///{store}/mlflow.db")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", "nosuch"])
    assert exit_.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sgqn: error: ")]
    assert f"no MLflow run with id or name 'nosuch' in any experiment at sqlite:///{store.resolve()}/" in line


def test_training_experiments_open_as_machine_learning_in_the_ui(tmp_path: Path) -> None:
    # MLflow 3's UI shows an experiment's runs and metrics (not its GenAI tabs) when its kind tag says so.
    from sgqn.app.sweeps.tracking import create_parent_run
    from sgqn.app.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND, SGQNMLFlowLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = SGQNMLFlowLogger(experiment_name="fits", tracking_uri=uri)
    client = logger.experiment
    assert client.get_experiment_by_name("fits").tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    create_parent_run(client, "sweeps", "grid", [], "grid: {}\n")
    assert client.get_experiment_by_name("sweeps").tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    # a kind the user chose in the UI stands
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    SGQNMLFlowLogger(experiment_name="chosen", tracking_uri=uri).experiment  # noqa: B018 (creates the run)
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
