"""Configs: the paper's settings are the defaults, one table of per-task defaults, experiment files
that hold only differences, and settings of another algorithm rejected."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml

from sgqn.algorithms.factory import AgentConfig
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.app.errors import ConfigError
from sgqn.app.fit import check_fit_args, cli_main
from sgqn.data.datamodule import DMCDataModule
from sgqn.envs import DEFAULT_ACTION_REPEAT, TASK_DEFAULTS, TASKS
from sgqn.nets.config import NetConfig
from sgqn.training.module import AgentModule
from sgqn.training.speed import SpeedOptions

SMALL: dict = dict(
    observation_shape=(9, 32, 32),
    action_dim=2,
    net=NetConfig(num_conv_layers=2, num_filters=8, hidden_dim=16),
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
    module = AgentModule(task=task, **SMALL)
    # None: the learner's reference depth and width (SAC lineage: 11 conv layers, features 100)
    assert model["net"]["num_conv_layers"] is None and model["net"]["feature_dim"] is None
    paper = AgentModule(task=task).critic
    assert paper.encoder.out_shape == (32, 21, 21) and paper.projection[0].out_features == 100  # 11 layers
    assert model["net"]["num_filters"] == 32 and model["net"]["hidden_dim"] == 1024
    assert model["sac"]["critic_lr"] == 1e-3 and model["sac"]["alpha_lr"] == 1e-4
    assert data["batch_size"] == 128 and data["image_size"] == 84 and data["num_agent_steps"] == 500_000
    assert data["render_quality"] == "reference" and data["frame_stack"] == 3
    assert model["sgqn"]["quantile"] is None and model["update_schedule"] == "reference"  # rho: the task's
    assert module.quantile == module.agent.quantile == PAPER_RHO[task]


def test_explicit_rho_wins_over_the_tasks() -> None:
    assert AgentModule(sgqn=SGQNConfig(quantile=0.9), task="cartpole_swingup", **SMALL).quantile == 0.9


def test_no_config_file_restates_a_default() -> None:
    files = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))
    assert files == [
        "drq.yaml", "drqv2.yaml", "quickstart.yaml", "sweep/cpu_mini.yaml", "sweep/paper.yaml", "tiny.yaml"
    ]  # fmt: skip
    for name in ("drq.yaml", "drqv2.yaml", "quickstart.yaml", "tiny.yaml"):
        data = yaml.safe_load((CONF / name).read_text())
        defaults = {**_defaults(AgentModule), **{f"data.{k}": v for k, v in _defaults(DMCDataModule).items()}}
        for group, fields in data.get("model", {}).items():
            if group == "algorithm":  # what the experiment is, stated even when it is the default
                continue
            for key, value in fields.items() if isinstance(fields, dict) else [(None, fields)]:
                default = defaults.get(group) if key is None else defaults[group].get(key, object())
                assert value != default, f"{name}: model.{group}.{key} restates its default"
        for key, value in data.get("data", {}).items():
            assert value != defaults.get(f"data.{key}", object()), f"{name}: data.{key} restates its default"


def test_command_line_overrides_win(capsys: pytest.CaptureFixture) -> None:
    config = resolved(
        capsys, "-c", str(CONF / "quickstart.yaml"), "--model.sgqn.quantile", "0.9", "--data.seed", "3"
    )
    assert config["model"]["sgqn"]["quantile"] == 0.9 and config["data"]["seed"] == 3
    assert config["model"]["net"]["num_conv_layers"] == 3  # the file's
    assert config["model"]["sgqn"]["decoder_channels"] == [16, 32, 16]  # the file's, beside the override


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["--model.algorithm", "sac", "--model.sgqn.quantile", "0.9"],
            "--model.sgqn.quantile (sgqn/drqv2_sgqn only)",
        ),
        (
            ["-c", str(CONF / "drqv2.yaml"), "--model.sac.init_temperature", "0.2"],
            "--model.sac.init_temperature",
        ),
        (
            ["--model.algorithm", "sgqn", "--model.drqv2.stddev_clip", "0.2"],
            "--model.drqv2.stddev_clip (drqv2/drqv2_sgqn",
        ),
        (["--model.algorithm", "sgqn", "--model.svea.alpha", "0.3"], "--model.svea.alpha (svea only)"),
        (["-c", str(CONF / "quickstart.yaml"), "--model.algorithm", "svea"], "--model.sgqn.decoder_channels"),
    ],
)
def test_a_setting_of_another_algorithm_is_an_error(args: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_fit_args([*args, "--trainer.logger", "false"])
    check_fit_args(["--model.algorithm", "sac", "--model.sgqn.quantile", "null", "--trainer.logger", "false"])


@pytest.mark.parametrize("algorithm", ["drqv2", "drqv2_sgqn"])
def test_drqv2_config_serves_the_papers_tasks(algorithm: str, capsys: pytest.CaptureFixture) -> None:
    for task in PAPER_RHO:
        config = resolved(
            capsys, "-c", str(CONF / "drqv2.yaml"), "--model.algorithm", algorithm, "--data.task", task
        )
        model, data = config["model"], config["data"]
        assert model["drqv2"]["critic_lr"] == model["drqv2"]["actor_lr"] == 1e-4
        agent = AgentModule(algorithm=algorithm, observation_shape=(9, 84, 84), task=task).agent
        assert agent.critic.encoder.out_shape == (32, 35, 35)  # DrQ-v2's 4 conv layers at 84 px
        assert agent.critic.projection[0].out_features == 50
        assert data["action_repeat"] == 2 and data["n_step"] == 3 and data["batch_size"] == 256
        assert data["update_every_steps"] == 2 and data["warmup_burst"] is False
    check_fit_args(
        ["-c", str(CONF / "drqv2.yaml"), "--model.algorithm", algorithm, "--trainer.logger", "false"]
    )


def test_drq_config_is_drqs_settings_for_100k_frames(capsys: pytest.CaptureFixture) -> None:
    model, data, evaluation = (
        resolved(capsys, "-c", str(CONF / "drq.yaml"))[k] for k in ("model", "data", "eval")
    )
    net, sac = model["net"], model["sac"]
    assert model["algorithm"] == "sac" and net["num_conv_layers"] == 4 and net["feature_dim"] == 50
    assert sac["actor_lr"] == sac["critic_lr"] == sac["alpha_lr"] == 1e-3
    assert sac["alpha_beta"] == 0.9 and sac["encoder_tau"] == sac["critic_tau"] == 0.01
    assert net["hidden_dim"] == 1024 and sac["init_temperature"] == 0.1 and sac["shift_pad"] == 4
    assert data["task"] == "cartpole_swingup" and data["image_size"] == 84 and data["frame_stack"] == 3
    assert data["num_agent_steps"] * 8 == 100_000 and data["init_steps"] == 1000 and data["batch_size"] == 128
    assert data["warmup_burst"] is False
    assert evaluation["episodes"] == 10 and data["num_agent_steps"] % evaluation["every_agent_steps"] == 0
    check_fit_args(["-c", str(CONF / "drq.yaml"), "--trainer.logger", "false"])


def _defaults(cls: type) -> dict[str, object]:
    """Each argument's default; a config group's as a dict of its fields (tuples as lists, as in YAML)."""
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {
        k: {f: plain(v) for f, v in dataclasses.asdict(p.default).items()}
        if dataclasses.is_dataclass(p.default)
        else plain(p.default)
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_data_seed_also_seeds_torch() -> None:
    import torch
    from lightning.pytorch.cli import LightningCLI

    from sgqn.app.fit import SGQNCLI

    def init(seed: str) -> tuple[LightningCLI, torch.Tensor]:
        cli = SGQNCLI(
            AgentModule,
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
        "channels_last": False, "subpixel_decoder": True, "compile_update": False, "compile_mode": None,
        "graph_update": False, "autocast_bf16": False, "tf32": None, "tune_malloc": True,
    }  # fmt: skip
    science = {f for group in config["model"].values() if isinstance(group, dict) for f in group}
    science |= set(config["model"])
    assert not (science - set(speed) - {"speed"}) & set(speed)  # no speed switch among the science settings
    assert not {f.name for f in dataclasses.fields(AgentConfig)} & set(speed)
    module = AgentModule(**SMALL, speed=SpeedOptions(channels_last=False))
    assert module.hparams["speed"]["channels_last"] is False  # a plain dict: weights-only checkpoints
    assert module.hparams["sac"]["critic_lr"] == 1e-3  # every config group too
    weight = AgentModule(**SMALL, speed=module.hparams["speed"]).critic.encoder.convs[0].weight
    assert not weight.is_contiguous(memory_format=torch.channels_last)
