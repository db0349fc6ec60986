"""A resume never corrupts the run it resumes (issue 23): a configuration that differs from the
checkpoint's in a setting a resume may not change is refused in one line (exit 2) before any MLflow run is
touched; a longer run length continues the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cli_helpers import TINY, all_runs
from sgqn.app.checkpointing import kept_replay_capacity, resume_conflicts
from sgqn.app.cli import main
from sgqn.app.errors import ConfigError
from sgqn.app.fit import check_same_tracking

# A few seconds of training: 10 random warm-up steps, 2 updates, one final evaluation episode.
SHORT = [
    "--data.init_steps", "10",
    "--eval.every_agent_steps", "0",
    "--eval.modes", "[train]",
    "--eval.saliency_every_evals", "0",
    "--eval.video_every_evals", "0",
    "--checkpoint.every_agent_steps", "0",
]  # fmt: skip


def _fit(*extra: str) -> None:
    # As a researcher types it: relative output folder and store, in the working directory.
    main(["fit", "-c", TINY, *SHORT, *extra])


def _refused(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        _fit("--ckpt_path", "last", *extra)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("sgqn: error: ")]
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    return line


def _last_checkpoint(store: Path) -> tuple[Path, dict[str, Any]]:
    (path,) = store.glob("outputs/*/*/checkpoints/last*.ckpt")  # one: no `last-v1.ckpt` beside it
    return path, torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def test_a_resume_refuses_other_settings_and_continues_a_longer_run(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit("--data.num_agent_steps", "12")
    (run,) = all_runs(store)
    assert run.info.status == "FINISHED"
    capsys.readouterr()

    line = _refused(capsys, "--data.num_agent_steps", "12", "--data.task", "walker_walk")
    assert "data.task 'cartpole_balance' → 'walker_walk'" in line and "last.ckpt" in line
    line = _refused(capsys, "--data.num_agent_steps", "12", "--model.sgqn.quantile", "0.9")
    assert "model.sgqn.quantile None → 0.9" in line and "data.task" not in line
    line = _refused(capsys, "--trainer.logger.init_args.experiment_name", "other")
    assert "experiment_name 'tiny' → 'other'" in line
    (after,) = all_runs(store)  # the same run, untouched: no new run, still FINISHED, not reopened
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert after.data.tags == run.data.tags and after.info.end_time == run.info.end_time

    # A longer run (and another evaluation cadence and speed switch) continues the same run to 16.
    _fit("--data.num_agent_steps", "16", "--ckpt_path", "last", "--model.speed.channels_last", "false")
    assert "sgqn: resuming" in capsys.readouterr().err
    (resumed,) = all_runs(store)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params["num_agent_steps"] == "12"  # MLflow params cannot change: a tag says it
    assert resumed.data.tags["resumed/num_agent_steps"] == "16"
    assert resumed.data.tags["resumed/speed/channels_last"] == "False"
    assert resumed.data.params["replay_capacity"] == run.data.params["replay_capacity"]  # kept
    path, checkpoint = _last_checkpoint(store)
    assert path.name == "last.ckpt" and checkpoint["DMCDataModule"]["stats"]["agent_steps"] == 16


def test_only_what_a_resume_may_change_is_allowed() -> None:
    saved = {
        "hyper_parameters": {
            "_instantiator": "x",
            "algorithm": "sgqn",
            "task": "cartpole_balance",
            "observation_shape": (9, 32, 32),
            "sgqn": {"quantile": None, "decoder_channels": (32, 128, 64)},
            "speed": {"compile_update": False},
        },
        "datamodule_hyper_parameters": {
            "task": "cartpole_balance",
            "num_agent_steps": 100,
            "replay_capacity": None,
            "batch_size": 16,
        },
    }
    model = {
        "algorithm": "sgqn",
        "task": "walker_walk",  # linked from data.task: named there
        "observation_shape": (9, 64, 64),  # linked from the data module
        "sgqn": {"quantile": 0.9, "decoder_channels": [32, 128, 64]},  # a list is the same tuple
        "speed": {"compile_update": True},  # allowed
        "new_option": 1,  # unknown to the checkpoint: not compared
    }
    data = {"task": "walker_walk", "num_agent_steps": 500, "replay_capacity": 102, "batch_size": 16}
    assert resume_conflicts(saved, model, data) == [
        ("data.task", "cartpole_balance", "walker_walk"),
        ("model.sgqn.quantile", None, 0.9),
    ]
    # The default capacity (the whole run) is the checkpoint's, kept by a longer resume.
    assert kept_replay_capacity(saved) == 102
    assert resume_conflicts(saved, model, data | {"replay_capacity": 200})[0][0] == "data.replay_capacity"


def test_a_resume_logs_into_the_run_s_own_store_and_experiment(tmp_path: Path) -> None:
    run = {"run_id": "abc", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment_name": "tiny"}
    (tmp_path / "mlflow.db").touch()
    check_same_tracking("ckpt", run, {"tracking_uri": None, "experiment_name": "tiny"})
    check_same_tracking("ckpt", run, {"tracking_uri": f"sqlite:///{tmp_path}/./mlflow.db"})
    with pytest.raises(ConfigError, match=r"init_args\.tracking_uri .* → 'sqlite:///elsewhere\.db'"):
        check_same_tracking("ckpt", run, {"tracking_uri": "sqlite:///elsewhere.db"})
    assert not Path("elsewhere.db").exists()  # looked for the run without creating a store
    with pytest.raises(ConfigError, match=r"experiment_name 'tiny' → 'sgqn'"):
        check_same_tracking("ckpt", run, {"experiment_name": "sgqn"})
    (tmp_path / "mlflow.db").unlink()
    with pytest.raises(ConfigError, match=r"in sqlite:////.*mlflow\.db, which does not exist"):
        check_same_tracking("ckpt", run, {})
