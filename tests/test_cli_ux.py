"""The command line as a researcher meets it: run names and tags, early one-line config errors, help,
suggestions, logged parameters, the end-of-fit summary and the filtered dependency noise."""

from __future__ import annotations

import logging
import re
import socket
import time
import warnings
from collections import namedtuple
from pathlib import Path

import pytest
import yaml

from cli_helpers import TINY, all_runs, fit_args, short_run
from sgqn.app import validation
from sgqn.app.arguments import suggest_options
from sgqn.app.checkpointing import AtomicCheckpointIO
from sgqn.app.cli import main
from sgqn.app.fit import cli_main
from sgqn.app.quiet import quiet_dependencies
from sgqn.app.tracking import git_commit

REPO = Path(__file__).resolve().parents[1]
# A few seconds per run: 30 agent steps, one final evaluation episode in the train env only.
SHORT = short_run(30, checkpoint_every=0)


# --------------------------------------------------------------------------- 1, 6, 7: a good run


def test_runs_of_one_seed_get_distinct_names_tags_resolved_params_and_a_summary(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = cli_main(fit_args(store, *SHORT))
    first = capsys.readouterr().out
    # given as a class path (an instance made jsonargparse warn that it cannot serialise it)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    main(fit_args(store, *SHORT))
    second = capsys.readouterr().out

    runs = all_runs(store)
    assert len(runs) == 2
    names = {run.info.run_name for run in runs}
    assert len(names) == 2, names  # MLflow's generator, seeded by seed_everything, gave both one name
    for run in runs:
        assert re.fullmatch(r"sgqn-cartpole_balance-s0-\d{8}-\d{6}(-\d+)?", run.info.run_name)
        tags = run.data.tags
        assert tags["algorithm"] == "sgqn" and tags["task"] == "cartpole_balance" and tags["seed"] == "0"
        assert tags["host"] == socket.gethostname()
        assert tags["git_commit"] == git_commit()
        assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?|unknown", tags["git_commit"])

        params = run.data.params
        assert not [k for k in params if k.startswith("_")], params  # no _instantiator / _class_path
        assert params["action_repeat"] == "8"  # cartpole's default, not "None"
        assert params["replay_capacity"] == "31"
        assert params["quantile"] == "0.98" and params["seed"] == "0"
        for key in ("dmcgb_root", "davis_root", "places_root", "overlay_root"):
            assert params[key] == "embedded"
    # the logged capacity is the one the replay buffer really had
    assert cli.datamodule.replay.buffer._storage.max_size == int(runs[0].data.params["replay_capacity"])

    for out in (first, second):
        run = next(r for r in runs if r.info.run_name in out)
        assert f"{run.info.run_name} (id {run.info.run_id})" in out
        assert "experiment:  tiny" in out
        assert "checkpoints: " + str(store / "outputs") in out
        assert "artifacts:   " in out and run.info.run_id in out
        assert re.search(r"final eval: .*train -?\d+\.\d", out)
        assert re.search(r"wall time: +\d+ s", out)
        assert f"mlflow ui --backend-store-uri sqlite:///{store}/mlflow.db" in out


def test_a_given_run_name_is_kept(store: Path) -> None:
    main(fit_args(store, *SHORT, "--trainer.logger.init_args.run_name", "my-run"))
    (run,) = all_runs(store)
    assert run.info.run_name == "my-run" and run.data.tags["task"] == "cartpole_balance"


def test_git_commit_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"


# --------------------------------------------------------------------------- 2: bad configs fail early


def _dmcgb_with_corrupt_color(root: Path) -> list[str]:
    folder = root / "dmcgb"
    folder.mkdir()
    (folder / "color_hard.pt").write_bytes(b"this is not a torch file")
    return ["--data.dmcgb_root", str(folder), "--eval.modes", "[train,color_hard]"]


def _empty_dir(root: Path, name: str) -> str:
    (root / name).mkdir()
    return str(root / name)


BAD = {
    "unknown mode": (lambda r: ["--eval.modes", "[train,video_hrd]"], ["'video_hrd'", "video_hard"]),
    "bad intensity": (lambda r: ["--eval.modes", "[distracting_cs@0.7]"], ["distracting_cs@0.7", "0.1"]),
    "unknown task": (lambda r: ["--data.task", "walker_wlk"], ["'walker_wlk'", "walker_walk"]),
    "missing dmcgb": (
        lambda r: ["--data.dmcgb_root", str(r / "nope"), "--eval.modes", "[color_hard]"],
        ["--data.dmcgb_root", str(Path("nope")), "color_hard.pt"],
    ),
    "corrupt color file": (_dmcgb_with_corrupt_color, ["--data.dmcgb_root", "color_hard.pt"]),
    "dmcgb without videos": (
        lambda r: ["--data.dmcgb_root", _empty_dir(r, "dmcgb"), "--eval.modes", "[video_hard]"],
        ["--data.dmcgb_root", "video_hard", "video*.mp4"],
    ),
    "davis layout": (
        lambda r: ["--data.davis_root", _empty_dir(r, "davis"), "--eval.modes", "[distracting_cs@0.1]"],
        ["--data.davis_root", "JPEGImages/480p"],
    ),
    "places without images": (
        lambda r: ["--data.places_root", _empty_dir(r, "places")],
        ["--data.places_root", "no images"],
    ),
    "replay too large": (
        lambda r: ["--data.replay_capacity", str(10**12)],
        ["--data.replay_capacity", "GiB"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_fails_fast_with_one_line_and_no_run(
    case: str, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_args, expected = BAD[case]
    args = fit_args(store, *make_args(store))
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    elapsed = time.perf_counter() - start
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("sgqn: error: ")]
    for word in expected:
        assert word in line, (word, line)
    assert "Traceback" not in err
    assert all_runs(store) == []  # nothing was started in MLflow
    assert not (store / "outputs").exists()
    assert elapsed < 5, elapsed  # checked before any env, trainer or run exists


def test_too_little_disk_fails_before_the_run(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(validation.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(store, *SHORT))
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("sgqn: error: --trainer.default_root_dir: ") and "GiB free" in line
    assert all_runs(store) == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(
    how: str, store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = fit_args(store, "--data.task", "walker_wlk")
    if how == "flag":
        args.append("--debug")
    else:
        monkeypatch.setenv("SGQN_DEBUG", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" in err and "ConfigError" in err and "sgqn: error: --data.task" in err


def test_mode_check_accepts_every_valid_mode() -> None:
    for mode in ("train", "color_easy", "color_hard", "video_easy", "video_hard"):
        assert validation.check_mode(mode, "walker_walk") is None
    assert validation.check_mode("distracting_cs@0.1", "walker_walk") == 0.1
    with pytest.raises(validation.ConfigError, match="only distracting_cs"):
        validation.check_mode("train@0.1", "walker_walk")
    with pytest.raises(validation.ConfigError, match="needs one of the intensities"):
        validation.check_mode("distracting_cs", "walker_walk")


# --------------------------------------------------------------------------- 3, 4, 5: help and parsing


def test_help_lists_every_subcommand_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    for name in ("fit", "evaluate"):
        (line,) = [x for x in out.splitlines() if x.strip().startswith(f"{name} ")]
        assert len(line.split()) > 2  # a name and a description
    with pytest.raises(SystemExit) as exit_info:
        main([])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "evaluate" in err and "a subcommand is required" in err


def test_evaluate_help_is_reached(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0 and "usage: sgqn evaluate" in capsys.readouterr().out


def test_unknown_subcommand_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt"])
    assert exit_info.value.code == 2 and "did you mean 'fit'" in capsys.readouterr().err


def test_optimizer_flags_are_gone(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model.actor_lr" in out  # the help is there
    assert "--optimizer" not in out and "--lr_scheduler" not in out
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(store, "--optimizer", "Adam"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unrecognized arguments: --optimizer" in err
    assert all_runs(store) == []


def test_unknown_option_suggests_near_names(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(store, "--model.lr", "0.1"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = err.splitlines()[0]
    assert line.startswith("sgqn: error: unrecognized arguments: --model.lr")
    assert "--model.actor_lr" in line and "--model.critic_lr" in line
    assert len(err.splitlines()) <= 2  # not jsonargparse's hundred-line usage

    (store / "bad.yaml").write_text("model:\n  quantle: 0.9\n")
    with pytest.raises(SystemExit):
        main(fit_args(store, "-c", str(store / "bad.yaml")))
    assert "--model.quantile" in capsys.readouterr().err.splitlines()[0]


def test_suggest_options() -> None:
    options = ["--model.actor_lr", "--model.critic_lr", "--model.quantile", "--model.help", "--data.seed"]
    assert suggest_options("--model.lr", options)[:2] == ["--model.actor_lr", "--model.critic_lr"]
    assert suggest_options("--model.quantle", options) == ["--model.quantile"]
    assert suggest_options("--modle.quantile=3", options) == ["--model.quantile"]
    assert suggest_options("--data.zzz", options) == []


# --------------------------------------------------------------------------- 8: console noise


def test_known_dependency_noise_is_filtered_and_nothing_else() -> None:
    def passes(logger: str, message: str) -> bool:
        record = logging.LogRecord(logger, logging.INFO, __file__, 1, message, None, None)
        return logging.getLogger(logger).filter(record)

    quiet_dependencies()
    rank_zero = "lightning.pytorch.utilities.rank_zero"
    assert not passes(rank_zero, "💡 Tip: For seamless cloud logging, try installing [litlogger](https://x)")
    assert not passes(rank_zero, "TPU available: False, using: 0 TPU cores")
    assert passes(rank_zero, "GPU available: False, used: False")
    assert not passes(rank_zero, "`Trainer.fit` stopped: `max_epochs=1` reached.")
    assert passes(rank_zero, "`Trainer.fit` stopped: `max_steps=10` reached.")
    assert not passes("mlflow.store.db.utils", "Creating initial MLflow database tables...")
    assert not passes("lightning.pytorch.loggers.mlflow", "Experiment with name tiny not found. Creating it.")
    assert not passes("torchrl", "Initialized LazyTensorStorage with torch.Size([203]) shape")
    assert not passes("torchrl", "Initialized LazyMemmapStorage with torch.Size([203]) shape")
    assert passes("torchrl", "something else")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_dependencies()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("pkg_resources is deprecated as an API.", UserWarning, stacklevel=1)
        warnings.warn(
            "Found `dataloader_iter` argument in the `training_step`. Note …", UserWarning, stacklevel=1
        )
        warnings.warn("You are using the `dataloader_iter` step flavor. If you …", UserWarning, stacklevel=1)
        warnings.warn("a warning that matters", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning that matters"]


CONFIGS = sorted(p for p in (REPO / "conf").rglob("*.yaml") if p.parent.name in ("sac", "svea", "sgqn"))


@pytest.mark.parametrize(
    "path", [*CONFIGS, REPO / "conf" / "quickstart.yaml", Path(TINY)], ids=lambda p: p.stem
)
def test_shipped_configs_pass_validation(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", "-c", str(path), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    monkeypatch.setattr(validation, "check_capacity_fits", lambda *args: None)  # RAM of the test machine
    validation.validate_fit_config(config)
