"""Runs that fail loudly: a diverged run stops naming the loss (FAILED, exit 3, checkpoints kept), bad
output or tracking locations fail at start-up, corrupt data is told apart from refused objects, and runs
whose process died are marked KILLED."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from mlflow import MlflowClient
from tensordict import TensorDict
from torch.utils.data import DataLoader

from cli_helpers import all_runs, fit_args, short_run
from sgqn.algorithms import sac as sac_update
from sgqn.algorithms import sgqn as sgqn_update
from sgqn.app.callbacks import EnvStepCheckpoint
from sgqn.app.cli import MLFLOW_HTTP_DEFAULTS, main
from sgqn.app.dead_runs import process_alive
from sgqn.app.tracking import SGQNMLFlowLogger
from sgqn.assets.colors import load_color_settings
from sgqn.assets.errors import DataSourceError
from sgqn.nets.config import NetConfig
from sgqn.training.guards import TrainingDiverged, check_weights, nonfinite_message
from sgqn.training.module import AgentModule
from sgqn.training.speed import SpeedOptions

REPO = Path(__file__).resolve().parents[1]
# ~10 s: 50 agent steps, a checkpoint at 25.
SHORT = short_run(50, checkpoint_every=25)
HUGE_LR = ["--model.sac.actor_lr", "1e9", "--model.sac.critic_lr", "1e9"]


def error_line(err: str) -> str:
    (line,) = [x for x in err.splitlines() if x.startswith("sgqn: error: ")]
    return line


def assert_finite_checkpoints(root: Path) -> list[Path]:
    files = sorted((root / "outputs").rglob("*.ckpt"))
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
    return files


# --------------------------------------------------------------------------- 1: non-finite values


def test_a_diverging_run_stops_naming_the_loss_and_update_and_is_failed(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*fit_args(store), *SHORT, *HUGE_LR])
    assert exit_info.value.code == TrainingDiverged.exit_code == 3
    err = capsys.readouterr().err
    line = error_line(err)
    assert " is nan at update " in line and "(agent step " in line, line
    assert "loss_" in line and "--model.sac.critic_lr (now 1e+09)" in line and "on_nonfinite skip" in line
    assert "Traceback" not in err and "PhysicsError" not in err and "BADCTRL" not in err
    (run,) = all_runs(store)
    assert run.info.status == "FAILED"
    assert_finite_checkpoints(store)  # none, or only good ones


def test_diverged_weights_never_overwrite_the_last_good_checkpoint(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Right after the checkpoint of agent step 25, a Q head's weights become NaN (as a huge step would
    # make them): the next update must stop the run, and no later save may replace last.ckpt.
    save = EnvStepCheckpoint.on_train_batch_end

    def save_then_poison(self: EnvStepCheckpoint, trainer: L.Trainer, module: Any, *args: Any) -> None:
        save(self, trainer, module, *args)
        if trainer.datamodule.stats.agent_steps >= 25:  # type: ignore[attr-defined]
            with torch.no_grad():
                next(module.critic.q1.parameters()).fill_(float("nan"))  # not the actor's encoder

    monkeypatch.setattr(EnvStepCheckpoint, "on_train_batch_end", save_then_poison)
    with pytest.raises(SystemExit) as exit_info:
        main([*fit_args(store), *SHORT])
    assert exit_info.value.code == 3
    line = error_line(capsys.readouterr().err)
    assert re.search(
        r"error: loss_critic is nan.* at update 2\d \(agent step 2\d\): lower --model.sac.critic_lr", line
    )
    assert "last good checkpoint is kept: " in line and line.endswith("last.ckpt")
    (run,) = all_runs(store)
    assert run.info.status == "FAILED"
    files = assert_finite_checkpoints(store)
    assert sorted(p.name for p in files) == ["agent_steps=25.ckpt", "last.ckpt"]
    assert (
        torch.load(files[1], map_location="cpu", weights_only=False)["global_step"]
        == torch.load(files[0], map_location="cpu", weights_only=False)["global_step"]
    )


def test_skip_mode_skips_nonfinite_updates_counts_them_and_finishes(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NaN critic loss on every third update, as a rare bad batch would give.
    td_loss = sgqn_update.td_loss
    calls = {"n": 0}

    def sometimes_nan(*args: Any) -> Any:
        loss = td_loss(*args)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] % 3 == 0 else loss

    monkeypatch.setattr(sgqn_update, "td_loss", sometimes_nan)  # the tiny config's SGQN
    main([*fit_args(store), *SHORT, "--model.on_nonfinite", "skip", "--trainer.log_every_n_steps", "1"])
    (run,) = all_runs(store)
    assert run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    skipped = [m.value for m in client.get_metric_history(run.info.run_id, "train/skipped_updates")]
    assert skipped and max(skipped) == calls["n"] // 3 > 0
    assert "last.ckpt" in {p.name for p in assert_finite_checkpoints(store)}


# Fast, without an env: the learner under a bare Lightning Trainer.

SIZE = 32


def _module(**kwargs: Any) -> AgentModule:
    torch.manual_seed(0)
    module = AgentModule(
        "sac", observation_shape=(9, SIZE, SIZE), action_dim=2,
        net=NetConfig(num_conv_layers=2, num_filters=8, feature_dim=8, hidden_dim=16),
        speed=SpeedOptions(tune_malloc=False), **kwargs,
    )  # fmt: skip
    return module


def _batches(n: int) -> list[TensorDict]:
    def one(i: int) -> TensorDict:
        g = torch.Generator().manual_seed(i)
        pixels = lambda: torch.randint(0, 256, (4, 9, SIZE, SIZE), dtype=torch.uint8, generator=g)  # noqa: E731
        nxt = {
            "pixels": pixels(),
            "reward": torch.rand(4, 1),
            "terminated": torch.zeros(4, 1, dtype=torch.bool),
        }
        return TensorDict(
            {"pixels": pixels(), "action": torch.rand(4, 2) * 2 - 1, "next": nxt}, batch_size=[4]
        )

    return [one(i) for i in range(n)]


def _fit(module: AgentModule, batches: list[TensorDict]) -> None:
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda x: x))


def test_skip_mode_applies_no_step_of_a_nonfinite_update(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(on_nonfinite="skip")
    monkeypatch.setattr(sac_update, "td_loss", lambda *a: torch.tensor(float("inf"), requires_grad=True))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _fit(module, _batches(2))
    after = module.state_dict()
    assert module.skipped_updates == 2 and int(module.update_step) == 2
    assert all(torch.equal(before[k], after[k]) for k in before if k != "update_step")


def test_stop_mode_raises_after_one_check_per_update(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module()
    syncs = {"n": 0}
    isfinite = torch.isfinite

    def counting(x: torch.Tensor) -> torch.Tensor:
        syncs["n"] += 1
        return isfinite(x)

    monkeypatch.setattr(torch, "isfinite", counting)
    _fit(module, _batches(2))  # finite: one check per update (the policy is not used here)
    assert syncs["n"] == 2
    monkeypatch.setattr(torch, "isfinite", isfinite)
    module.agent.alpha_loss = lambda *a: torch.tensor(float("nan"), requires_grad=True)  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"loss_alpha is nan at update 3: lower --model.sac.critic_lr"):
        _fit(module, _batches(1))


def test_the_policy_never_returns_a_nonfinite_action() -> None:
    module = _module()
    policy = module.policy_module(deterministic=True)
    pixels = torch.randint(0, 256, (9, SIZE, SIZE), dtype=torch.uint8)
    assert torch.isfinite(policy(TensorDict({"pixels": pixels}))["action"]).all()
    with torch.no_grad():
        next(module.actor.trunk.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="action is not finite"):
        policy(TensorDict({"pixels": pixels}))


def test_nonfinite_weights_are_never_saved(tmp_path: Path) -> None:
    module = _module()
    with torch.no_grad():
        next(module.critic.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="refusing to save a checkpoint"):
        check_weights(module.state_dict(), "now")


def test_the_message_names_the_losses_and_the_learning_rates_before_them() -> None:
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    rates = {
        "loss_critic": ("sac.critic_lr", 1e9),
        "loss_actor": ("sac.actor_lr", 1e-3),
        "loss_alpha": ("sac.alpha_lr", 1e-4),
    }
    text = nonfinite_message({"loss_critic": one, "loss_actor": nan, "loss_alpha": nan}, rates, 24, 124)
    assert text.startswith("loss_actor is nan, loss_alpha is nan at update 24 (agent step 124): lower ")
    assert "--model.sac.critic_lr (now 1e+09) or --model.sac.actor_lr (now 0.001)" in text
    assert "alpha_lr" not in text.split(":")[1].split(",")[0]


# --------------------------------------------------------------------------- 2: where the run writes


@pytest.fixture
def read_only(tmp_path: Path) -> Path:
    """A folder nobody may write into: a chmod'ed one, or sysfs where root writes anyway."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    return Path("/sys")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LOCATIONS = {
    "output under a file": (lambda r, ro: ["--trainer.default_root_dir", str(r / "file" / "out")], ["is a file"]),
    "read-only output": (lambda r, ro: ["--trainer.default_root_dir", str(ro / "out")], ["not writable"]),
    "read-only checkpoints": (lambda r, ro: ["--checkpoint.dirpath", str(ro / "ckpt")], ["--checkpoint.dirpath"]),
    "read-only sqlite": (
        lambda r, ro: ["--trainer.logger.init_args.tracking_uri", f"sqlite:///{ro}/mlflow.db"],
        ["--trainer.logger.init_args.tracking_uri", "cannot be written", "not writable"],
    ),
    "sqlite under a file": (
        lambda r, ro: ["--trainer.logger.init_args.tracking_uri", f"sqlite:///{r}/file/mlflow.db"],
        ["cannot be written", "is a file"],
    ),
    "server not answering": (
        lambda r, ro: ["--trainer.logger.init_args.tracking_uri", f"http://127.0.0.1:{_closed_port()}"],
        ["--trainer.logger.init_args.tracking_uri", "does not answer", "mlflow server"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LOCATIONS))
def test_unusable_output_or_tracking_location_fails_at_start(
    case: str, store: Path, read_only: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (store / "file").write_text("not a folder")
    make_args, expected = LOCATIONS[case]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main([*fit_args(store), *make_args(store, read_only)])
    elapsed = time.perf_counter() - start
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = error_line(err)
    for word in expected:
        assert word in line, (word, line)
    assert "Traceback" not in err and len(err.splitlines()) <= 2
    assert all_runs(store) == [] and not (store / "outputs").exists()
    assert elapsed < 5, elapsed


def test_mlflow_http_retries_are_short_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in MLFLOW_HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    main(["--help"])
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"  # the user's value
    assert (
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        == MLFLOW_HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    )


# --------------------------------------------------------------------------- 3: corrupt vs refused data


class NotAColour:
    """What a tampered colour file might hold instead of numpy arrays."""


def test_a_corrupt_colour_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save([{"grid_rgb1": torch.zeros(3)}], good)
    files = {"garbage": b"this is not a torch file", "empty": b"", "truncated": good.read_bytes()[:200]}
    for name, data in files.items():
        path = tmp_path / f"color_{name}.pt"
        path.write_bytes(data)
        with pytest.raises(DataSourceError) as info:
            load_color_settings(path)
        message = str(info.value)
        assert str(path) in message and "is corrupt or not a torch file" in message, message
        assert "expected DMC-GB's color_easy.pt / color_hard.pt" in message
        assert "refused" not in message and "weights_only" not in message


def test_a_well_formed_file_with_other_objects_is_refused_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "color_hard.pt"
    torch.save([NotAColour()], path)
    with pytest.raises(DataSourceError) as info:
        load_color_settings(path)
    message = str(info.value)
    assert str(path) in message and "readable torch file" in message and "NotAColour" in message
    assert "refused for safety" in message and "list of dicts of numpy arrays" in message
    assert "corrupt" not in message
    assert "weights_only" not in message and "safe_globals" not in message  # never torch's advice


# --------------------------------------------------------------------------- 4: runs whose process died


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_process_alive_tells_reused_and_dead_pids() -> None:
    assert process_alive(os.getpid(), time.time())
    assert not process_alive(os.getpid(), since=0.0)  # started after the run: the pid was reused
    assert not process_alive(_dead_pid(), time.time())


def test_a_run_whose_process_died_is_marked_killed_by_the_next_fit(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    experiment = client.create_experiment("tiny")
    host = socket.gethostname()

    def running(pid: int, folder: Path) -> str:
        tags = {"host": host, "pid": str(pid), "checkpoint_dir": str(folder)}
        return client.create_run(experiment, tags=tags).info.run_id

    dead = running(_dead_pid(), store / "outputs" / experiment / "old" / "checkpoints")
    alive = running(os.getpid(), store / "outputs" / experiment / "live" / "checkpoints")
    elsewhere = running(_dead_pid(), store / "other" / "checkpoints")
    main([*fit_args(store), *SHORT, "--data.num_agent_steps", "25"])

    status = {run.info.run_id: run.info.status for run in all_runs(store)}
    assert status.pop(dead) == "KILLED"
    assert status.pop(alive) == "RUNNING" and status.pop(elsewhere) == "RUNNING"
    (new,) = status.values()
    assert new == "FINISHED"
    notice = [x for x in capsys.readouterr().err.splitlines() if dead in x]
    assert len(notice) == 1 and "marked KILLED" in notice[0]
    new_run = next(r for r in all_runs(store) if r.info.run_id not in (dead, alive, elsewhere))
    assert new_run.data.tags["pid"] == str(os.getpid()) and new_run.data.tags["host"] == host


def test_a_resumed_run_is_running_again_under_this_process(store: Path) -> None:
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("tiny"), tags={"pid": "1", "host": "elsewhere"})
    client.set_terminated(run.info.run_id, "KILLED")
    SGQNMLFlowLogger("tiny", tracking_uri=uri, run_id=run.info.run_id).experiment  # noqa: B018
    again = client.get_run(run.info.run_id)
    assert again.info.status == "RUNNING"
    assert again.data.tags["pid"] == str(os.getpid()) and again.data.tags["host"] == socket.gethostname()
