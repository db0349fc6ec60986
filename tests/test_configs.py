"""Configs: the paper's settings are the defaults, one table of per-task defaults, experiment files
that hold only differences, and settings of another algorithm rejected."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from sgqn.app.errors import ConfigError
from sgqn.app.fit import check_fit_args, cli_main
from sgqn.data.stream import DMCDataModule
from sgqn.envs import DEFAULT_ACTION_REPEAT, TASK_DEFAULTS, TASKS
from sgqn.module import SGQNModule, SpeedOptions

SMALL: dict = dict(
    observation_shape=(9, 32, 32), action_dim=2, num_conv_layers=2, num_filters=8, hidden_dim=16
)

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_RHO = {"cartpole_swingup": 0.98, "ball_in_cup_catch": 0.98, "walker_walk": 0.95, "walker_stand": 0.95}
PAPER_RHO |= {"finger_spin": 0.95}


def resolved(capsys: pytest.CaptureFixture, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_one_table_of_per_task_defaults() -> None:
    assert set(TASK_DEFAULTS) == set(TASKS) and len(TASKS) >= 8
    for task, rho in PAPER_RHO.items():  # the paper's appendix
        assert TASK_DEFAULTS[task].quantile == rho
    assert DEFAULT_ACTION_REPEAT["cartpole_swingup"] == 8 and DEFAULT_ACTION_REPEAT["finger_spin"] == 2
    assert DEFAULT_ACTION_REPEAT["walker_walk"] == 4


@pytest.mark.parametrize("task", sorted(PAPER_RHO))
def test_the_paper_run_needs_no_config_file(task: str, capsys: pytest.CaptureFixture) -> None:
    config = resolved(capsys, "--model.algorithm", "sgqn", "--data.task", task)
    model, data = config["model"], config["data"]
    assert model["num_conv_layers"] == 11 and model["num_filters"] == 32 and model["hidden_dim"] == 1024
    assert model["feature_dim"] == 100 and model["critic_lr"] == 1e-3 and model["alpha_lr"] == 1e-4
    assert data["batch_size"] == 128 and data["image_size"] == 84 and data["num_env_steps"] == 500_000
    assert data["render_quality"] == "reference" and data["frame_stack"] == 3
    assert model["quantile"] is None and model["update_schedule"] == "reference"  # rho: the task's
    assert SGQNModule(quantile=None, task=task, **SMALL).quantile == PAPER_RHO[task]


def test_explicit_rho_wins_over_the_tasks() -> None:
    assert SGQNModule(quantile=0.9, task="cartpole_swingup", **SMALL).quantile == 0.9


def test_no_config_file_restates_a_default() -> None:
    files = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))
    assert files == [
        "drq.yaml", "drqv2.yaml", "quickstart.yaml", "sweep/cpu_mini.yaml", "sweep/paper.yaml", "tiny.yaml"
    ]  # fmt: skip
    for name in ("drq.yaml", "drqv2.yaml", "quickstart.yaml", "tiny.yaml"):
        data = yaml.safe_load((CONF / name).read_text())
        defaults = {**_defaults(SGQNModule), **{f"data.{k}": v for k, v in _defaults(DMCDataModule).items()}}
        for key, value in data.get("model", {}).items():
            if key == "algorithm":  # what the experiment is, stated even when it is the default
                continue
            assert value != defaults.get(key, object()), f"{name}: model.{key} restates its default"
        for key, value in data.get("data", {}).items():
            assert value != defaults.get(f"data.{key}", object()), f"{name}: data.{key} restates its default"


def test_command_line_overrides_win(capsys: pytest.CaptureFixture) -> None:
    config = resolved(
        capsys, "-c", str(CONF / "quickstart.yaml"), "--model.quantile", "0.9", "--data.seed", "3"
    )
    assert config["model"]["quantile"] == 0.9 and config["data"]["seed"] == 3
    assert config["model"]["num_conv_layers"] == 3  # the file's


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.algorithm", "sac", "--model.quantile", "0.9"], "--model.quantile (sgqn/drqv2_sgqn only)"),
        (["-c", str(CONF / "drqv2.yaml"), "--model.init_temperature", "0.2"], "--model.init_temperature"),
        (
            ["--model.algorithm", "sgqn", "--model.stddev_clip", "0.2"],
            "--model.stddev_clip (drqv2/drqv2_sgqn",
        ),
        (["--model.algorithm", "sgqn", "--model.svea_alpha", "0.3"], "--model.svea_alpha (svea only)"),
        (["-c", str(CONF / "quickstart.yaml"), "--model.algorithm", "svea"], "--model.decoder_channels"),
    ],
)
def test_a_setting_of_another_algorithm_is_an_error(args: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_fit_args([*args, "--trainer.logger", "false"])
    check_fit_args(["--model.algorithm", "sac", "--model.quantile", "null", "--trainer.logger", "false"])


@pytest.mark.parametrize("algorithm", ["drqv2", "drqv2_sgqn"])
def test_drqv2_config_serves_the_papers_tasks(algorithm: str, capsys: pytest.CaptureFixture) -> None:
    for task in PAPER_RHO:
        config = resolved(
            capsys, "-c", str(CONF / "drqv2.yaml"), "--model.algorithm", algorithm, "--data.task", task
        )
        model, data = config["model"], config["data"]
        assert model["num_conv_layers"] == 4 and model["feature_dim"] == 50 and model["critic_lr"] == 1e-4
        assert data["action_repeat"] == 2 and data["n_step"] == 3 and data["batch_size"] == 256
        assert data["update_every_steps"] == 2 and data["warmup_burst"] is False
    check_fit_args(
        ["-c", str(CONF / "drqv2.yaml"), "--model.algorithm", algorithm, "--trainer.logger", "false"]
    )


def test_drq_config_is_drqs_settings_for_100k_frames(capsys: pytest.CaptureFixture) -> None:
    model, data, evaluation = (
        resolved(capsys, "-c", str(CONF / "drq.yaml"))[k] for k in ("model", "data", "eval")
    )
    assert model["algorithm"] == "sac" and model["num_conv_layers"] == 4 and model["feature_dim"] == 50
    assert model["actor_lr"] == model["critic_lr"] == model["alpha_lr"] == 1e-3
    assert model["alpha_beta"] == 0.9 and model["encoder_tau"] == model["critic_tau"] == 0.01
    assert model["hidden_dim"] == 1024 and model["init_temperature"] == 0.1 and model["shift_pad"] == 4
    assert data["task"] == "cartpole_swingup" and data["image_size"] == 84 and data["frame_stack"] == 3
    assert data["num_env_steps"] * 8 == 100_000 and data["init_steps"] == 1000 and data["batch_size"] == 128
    assert data["warmup_burst"] is False
    assert evaluation["episodes"] == 10 and data["num_env_steps"] % evaluation["every_env_steps"] == 0
    check_fit_args(["-c", str(CONF / "drq.yaml"), "--trainer.logger", "false"])


def _defaults(cls: type) -> dict[str, object]:
    return {
        k: list(p.default) if isinstance(p.default, tuple) else p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_data_seed_also_seeds_torch() -> None:
    import torch
    from lightning.pytorch.cli import LightningCLI

    from sgqn.app.fit import SGQNCLI
    from sgqn.data.stream import DMCDataModule
    from sgqn.module import SGQNModule

    def init(seed: str) -> tuple[LightningCLI, torch.Tensor]:
        cli = SGQNCLI(
            SGQNModule,
            DMCDataModule,
            run=False,
            save_config_callback=None,
            parser_kwargs={"parser_mode": "omegaconf", "default_env": False},
            args=["-c", str(CONF / "tiny.yaml"), "--data.seed", seed, "--trainer.logger", "false"],
        )
        return cli, cli.model.critic.q1[0].weight.detach().clone()

    cli, first = init("3")
    assert cli.config["seed_everything"] == 3 and torch.initial_seed() == 3
    assert torch.equal(init("3")[1], first) and not torch.equal(init("4")[1], first)


def test_speed_switches_are_their_own_group(capsys: pytest.CaptureFixture) -> None:
    config = resolved(capsys, "-c", str(CONF / "quickstart.yaml"), "--model.speed.channels_last", "false")
    speed = config["model"]["speed"]
    assert speed == {
        "channels_last": False, "subpixel_decoder": True, "compile": False, "compile_update": False,
        "compile_mode": None, "graph_update": False, "autocast_bf16": False, "tf32": None, "tune_malloc": True,
    }  # fmt: skip
    science = set(config["model"]) - {"speed"}
    assert not science & set(speed)  # no speed switch among the science settings
    module = SGQNModule(**SMALL, speed=SpeedOptions(channels_last=False))
    assert module.hparams["speed"]["channels_last"] is False  # a plain dict: weights-only checkpoints
    assert not SGQNModule(**SMALL, speed=module.hparams["speed"]).critic.encoder.channels_last
