"""Checkpoint files: atomic writes, one-line errors for missing/corrupt ones, the global RNGs, the clock."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import all_runs, fit_args
from sgqn.app.checkpointing import (
    AtomicCheckpointIO,
    GlobalRngState,
    find_last_checkpoint,
    load_checkpoint_file,
)
from sgqn.app.cli import main
from sgqn.app.errors import ConfigError
from sgqn.app.fit import resume_from_checkpoint
from sgqn.app.schedule import Cadence


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    class Unpicklable:  # torch.save fails half-way through writing the new file
        def __reduce__(self) -> tuple:
            raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError, match="mid-save"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "x": Unpicklable()}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all", None], ids=["empty", "garbage", "truncated"]
)
def test_corrupt_or_missing_checkpoints_are_one_line_errors(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "last.ckpt"
    if content is None:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[:-500])
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"checkpoint .*last\.ckpt is corrupt or truncated") as err:
        load_checkpoint_file(path)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint_file(tmp_path / "nope.ckpt")


def test_a_checkpoint_holding_foreign_objects_is_refused_as_such(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "x": Path("/")}, path)  # well formed, but a pathlib object inside
    with pytest.raises(ConfigError, match=r"holds .*Path.*never contain") as err:
        load_checkpoint_file(path)
    assert "weights_only" not in str(err.value) and "corrupt" not in str(err.value)


def test_resume_last_without_a_checkpoint_fails_and_auto_starts_fresh(tmp_path: Path) -> None:
    def config(ckpt: str | None, resume: str) -> dict:
        return {
            "ckpt_path": ckpt,
            "resume": resume,
            "checkpoint": {"dirpath": None},
            "trainer": {"default_root_dir": str(tmp_path), "logger": None},
        }

    with pytest.raises(ConfigError, match=r"no last\.ckpt under"):
        resume_from_checkpoint(config("last", "never"))
    fresh = config(None, "auto")
    resume_from_checkpoint(fresh)
    assert fresh["ckpt_path"] is None
    older, newer = (
        tmp_path / "1" / "a" / "checkpoints" / "last.ckpt",
        tmp_path / "1" / "b" / "checkpoints" / "last.ckpt",
    )
    for path in (older, newer):
        AtomicCheckpointIO().save_checkpoint(
            {"state_dict": {}, "mlflow": {"run_id": path.parts[-3], "tracking_uri": "x"}}, path
        )
    assert find_last_checkpoint(tmp_path) == newer
    auto = config(None, "auto") | {
        "trainer": {"default_root_dir": str(tmp_path), "logger": {"init_args": {}}}
    }
    resume_from_checkpoint(auto)
    assert auto["ckpt_path"] == str(newer) and auto["trainer"]["logger"]["init_args"]["run_id"] == "b"
    assert auto["checkpoint"]["dirpath"] == str(newer.parent.resolve())


def test_global_rng_state_round_trip_is_weights_only_safe(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    saved = GlobalRngState().state_dict()
    torch.save(saved, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restored = GlobalRngState()
    restored.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    restored.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_cadence_fires_at_each_multiple_once_and_resumes() -> None:
    cadence = Cadence(100)
    fired = [step for step in range(1, 451) if cadence.due(step)]
    assert fired == [100, 200, 300, 400]
    jumped = Cadence(100)
    assert jumped.due(250) and not jumped.due(299) and jumped.due(300)  # several multiples at once: once
    resumed = Cadence(100)
    resumed.load_state_dict(cadence.state_dict())
    assert [s for s in range(451, 700) if resumed.due(s)] == [500, 600]
    assert not any(Cadence(0).due(s) for s in range(1, 300))


def test_fit_from_a_corrupt_checkpoint_exits_2_in_one_line_before_any_run(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = store / "last.ckpt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(store, "--ckpt_path", str(bad)))
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sgqn: error")]
    assert len(lines) == 1 and "last.ckpt is corrupt or truncated" in lines[0]
    assert all_runs(store) == []
