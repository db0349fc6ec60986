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
from sgqn.app.eval_callback import EvaluationCallback
from sgqn.app.fit import check_fit_args, cli_main, learner_of
from sgqn.data.datamodule import DMCDataModule
from sgqn.envs import DEFAULT_ACTION_REPEAT, TASK_DEFAULTS, TASKS
from sgqn.envs.tasks import REFERENCE_OPTIONS, ReferenceSettings, reference_settings, resolve_settings
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


def _options(tree: dict, prefix: str = "") -> dict[str, object]:
    """A config file's values as `group.option` (`model.net.feature_dim`): nested groups flattened."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _options(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _file_defaults(options: dict[str, object]) -> dict[str, object]:
    """Each `model.*` / `data.*` / reference option's default for a config file with these `options`:
    an option defaulting to None ("the learner's reference for the task") at what it resolves to for
    the file's algorithm and task with the file's other values (`sgqn.envs.tasks.resolve_settings`)."""
    defaults = {f"model.{k}": v for k, v in _options(_defaults(AgentModule)).items()}
    defaults |= {f"data.{k}": v for k, v in _defaults(DMCDataModule).items()}
    defaults["eval.every_agent_steps"] = _defaults(EvaluationCallback)["every_agent_steps"]
    algorithm = str(options.get("model.algorithm", defaults["model.algorithm"]))
    task = str(options.get("data.task", defaults["data.task"]))
    for option in REFERENCE_OPTIONS:
        assert defaults[option] is None, option  # "the learner's reference": resolved below
        others = {k: v for k, v in options.items() if k != option}
        defaults[option] = resolve_settings(learner_of(algorithm), task, others)[option]
    return defaults


def test_no_config_file_restates_a_default() -> None:
    files = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))
    assert files == [
        "drq.yaml", "drqv2.yaml", "quickstart.yaml", "sweep/cpu_mini.yaml", "sweep/paper.yaml", "tiny.yaml"
    ]  # fmt: skip
    checked = 0
    for name in ("drq.yaml", "drqv2.yaml", "quickstart.yaml", "tiny.yaml"):
        options = _options(yaml.safe_load((CONF / name).read_text()))
        defaults = _file_defaults(options)
        for option, value in options.items():
            # `model.algorithm`: what the experiment is, stated even when it is the default
            if option in defaults and option != "model.algorithm":
                assert _plain(value) != defaults[option], f"{name}: {option} restates its default"
                checked += 1
    assert checked >= 30  # nested groups (model.net.*, model.sac.*, model.sgqn.*) and data.* are compared
    # The check sees a restated reference: a None default compares as what it resolves to.
    drqv2 = _file_defaults({"model.algorithm": "drqv2", "data.task": "walker_walk"})
    assert drqv2["data.n_step"] == 1 and drqv2["data.batch_size"] == 512 and drqv2["data.action_repeat"] == 2
    assert _file_defaults({"data.task": "finger_spin"})["data.action_repeat"] == 2  # the SAC lineage's
    assert _file_defaults({"model.algorithm": "drqv2"})["model.drqv2.stddev_steps"] == 100_000


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


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


# facebookresearch/drqv2 `cfgs/task/<task>.yaml` for each of our tasks (its cup_catch is our
# ball_in_cup_catch): the level file it includes (`defaults: [easy]` / `[medium]`), nstep and batch_size
# (cfgs/config.yaml: 3 and 256 unless the task's file says otherwise).
DRQV2_TASKS = {
    "walker_walk": ("easy", 1, 512), "walker_stand": ("easy", 1, 512), "walker_run": ("medium", 1, 512),
    "cartpole_swingup": ("easy", 3, 256), "cartpole_balance": ("easy", 3, 256),
    "ball_in_cup_catch": ("easy", 3, 256), "finger_spin": ("easy", 3, 256),
    "cheetah_run": ("medium", 3, 256), "reacher_easy": ("medium", 3, 256), "reacher_hard": ("medium", 3, 256),
}  # fmt: skip
# cfgs/task/easy.yaml, medium.yaml: num_train_frames, stddev_schedule linear(1.0, 0.1, N agent steps)
DRQV2_FRAMES, DRQV2_SIGMA_STEPS = (
    {"easy": 1_100_000, "medium": 3_100_000},
    {"easy": 100_000, "medium": 500_000},
)


def drqv2_reference(task: str) -> ReferenceSettings:
    """DrQ-v2's run on `task` from its cfgs, frames → agent steps at its action repeat 2 (`train.py`)."""
    level, n_step, batch = DRQV2_TASKS[task]
    steps = DRQV2_FRAMES[level] // 2
    return ReferenceSettings(
        action_repeat=2,  # cfgs/config.yaml action_repeat
        n_step=n_step,
        batch_size=batch,
        num_agent_steps=steps,
        init_steps=4000 // 2,  # num_seed_frames (and agent.num_expl_steps 2000)
        update_every_steps=2,  # agent.update_every_steps
        warmup_burst=False,  # one update per due step from the first: `update(replay_iter, step)`
        replay_capacity=None if steps <= 1_000_000 else 1_000_000,  # replay_buffer_size, or the whole run
        eval_every_agent_steps=10_000 // 2,  # eval_every_frames
        stddev_steps=DRQV2_SIGMA_STEPS[level],
    )


def sac_reference(task: str) -> ReferenceSettings:
    """The SAC lineage's values before they defaulted to None (DMC-GB's arguments.py; the paper)."""
    return ReferenceSettings(DEFAULT_ACTION_REPEAT[task], 1, 128, 500_000, 1000, 1, True, None, 10_000, None)


def test_the_reference_settings_of_each_learner_and_task() -> None:
    assert set(DRQV2_TASKS) == set(TASKS)
    for task in TASKS:
        assert reference_settings("drqv2", task) == drqv2_reference(task), task
        assert reference_settings("sac", task) == sac_reference(task), task
    medium = sorted(t for t in TASKS if TASK_DEFAULTS[t].drqv2_level == "medium")
    assert medium == ["cheetah_run", "reacher_easy", "reacher_hard", "walker_run"]
    assert reference_settings("drqv2", "cheetah_run").num_agent_steps == 1_550_000  # 3.1M frames
    assert reference_settings("drqv2", "walker_walk").num_agent_steps == 550_000  # 1.1M frames
    # Frame counts at another action repeat: the same frames in fewer agent steps; sigma counts agent steps.
    four = reference_settings("drqv2", "cartpole_swingup", action_repeat=4)
    assert (four.num_agent_steps, four.init_steps, four.eval_every_agent_steps) == (275_000, 1000, 2500)
    assert four.stddev_steps == 100_000
    with pytest.raises(ValueError, match="valid tasks"):
        reference_settings("drqv2", "walker_jog")


@pytest.mark.parametrize("algorithm", ["drqv2", "drqv2_sgqn"])
def test_drqv2_alone_is_the_reference_run_of_each_task(algorithm: str, capsys: pytest.CaptureFixture) -> None:
    for task in TASKS if algorithm == "drqv2" else ("walker_walk", "cheetah_run"):
        config = resolved(capsys, "--model.algorithm", algorithm, "--data.task", task)
        model, data = config["model"], config["data"]
        want = drqv2_reference(task)
        if task in ("walker_walk", "cheetah_run"):  # conf/drqv2.yaml: the same run
            assert config == resolved(capsys, "-c", str(CONF / "drqv2.yaml"), "--model.algorithm", algorithm,
                                      "--data.task", task)  # fmt: skip
        assert {k: data[k] for k in ("action_repeat", "n_step", "batch_size", "num_agent_steps")} == {
            "action_repeat": 2, "n_step": want.n_step, "batch_size": want.batch_size,
            "num_agent_steps": want.num_agent_steps,
        }, task  # fmt: skip
        assert (
            data["init_steps"] == 2000 and data["update_every_steps"] == 2 and data["warmup_burst"] is False
        )
        assert data["replay_capacity"] == want.replay_capacity and data["n_step_partial_windows"] is False
        assert config["eval"]["every_agent_steps"] == 5000
        assert model["drqv2"]["stddev_steps"] == want.stddev_steps
        assert model["drqv2"]["critic_lr"] == model["drqv2"]["actor_lr"] == 1e-4
    agent = AgentModule(algorithm=algorithm, observation_shape=(9, 84, 84), task="cheetah_run").agent
    assert agent.critic.encoder.out_shape == (32, 35, 35)  # DrQ-v2's 4 conv layers at 84 px
    assert agent.critic.projection[0].out_features == 50
    check_fit_args(
        ["-c", str(CONF / "drqv2.yaml"), "--model.algorithm", algorithm, "--trainer.logger", "false"]
    )


def test_an_explicit_flag_wins_over_the_reference(capsys: pytest.CaptureFixture) -> None:
    flags = ["--data.n_step", "3", "--data.batch_size", "64", "--eval.every_agent_steps", "123"]
    flags += ["--model.drqv2.stddev_steps", "7", "--data.warmup_burst", "true", "--data.init_steps", "10"]
    config = resolved(capsys, "--model.algorithm", "drqv2", "--data.task", "walker_walk", *flags)
    data = config["data"]
    assert (data["n_step"], data["batch_size"], data["warmup_burst"], data["init_steps"]) == (3, 64, True, 10)
    assert config["eval"]["every_agent_steps"] == 123 and config["model"]["drqv2"]["stddev_steps"] == 7
    assert data["num_agent_steps"] == 550_000 and data["update_every_steps"] == 2  # the rest: the reference's
    # an explicit action repeat: DrQ-v2's frame budgets at that repeat
    data = resolved(capsys, "--model.algorithm", "drqv2", "--data.action_repeat", "4")["data"]
    assert (data["action_repeat"], data["num_agent_steps"], data["init_steps"]) == (4, 275_000, 1000)
    # a long DrQ-v2 run keeps the reference's 1M-transition replay; a short one the whole run
    data = resolved(capsys, "--model.algorithm", "drqv2", "--data.num_agent_steps", "2000000")["data"]
    assert data["replay_capacity"] == 1_000_000
    data = resolved(capsys, "--model.algorithm", "drqv2", "--data.task", "cheetah_run",
                    "--data.num_agent_steps", "1000")["data"]  # fmt: skip
    assert data["replay_capacity"] is None and data["n_step"] == 3
    given = {"data.n_step": 5, "data.replay_capacity": 10}
    assert resolve_settings("drqv2", "cheetah_run", given)["data.n_step"] == 5
    assert resolve_settings("drqv2", "cheetah_run", given)["data.replay_capacity"] == 10


@pytest.mark.parametrize("algorithm", ["sac", "svea", "sgqn"])
def test_the_sac_lineage_resolves_to_todays_values(algorithm: str, capsys: pytest.CaptureFixture) -> None:
    for task in ("walker_walk", "cheetah_run", "cartpole_swingup", "finger_spin"):
        config = resolved(capsys, "--model.algorithm", algorithm, "--data.task", task)
        data = config["data"]
        assert {k: data[k] for k in ("action_repeat", "n_step", "batch_size", "num_agent_steps")} == {
            "action_repeat": DEFAULT_ACTION_REPEAT[task], "n_step": 1, "batch_size": 128,
            "num_agent_steps": 500_000,
        }  # fmt: skip
        assert data["init_steps"] == 1000 and data["update_every_steps"] == 1 and data["warmup_burst"] is True
        assert data["replay_capacity"] is None  # the whole run
        assert config["eval"]["every_agent_steps"] == 10_000
        assert config["model"]["drqv2"]["stddev_steps"] is None  # not the SAC lineage's setting


def test_modules_built_directly_resolve_their_none_arguments() -> None:
    from types import SimpleNamespace

    data = DMCDataModule(task="cheetah_run", image_size=32, render_quality="fast", learner="drqv2")
    hp = data.hparams
    assert (hp["action_repeat"], hp["n_step"], hp["batch_size"]) == (2, 3, 256)
    assert (hp["num_agent_steps"], hp["init_steps"], hp["update_every_steps"]) == (1_550_000, 2000, 2)
    assert hp["warmup_burst"] is False and hp["replay_capacity"] == 1_000_000
    assert data.env_settings.action_repeat == 2 and data.replay_settings.capacity == 1_000_000
    assert data.schedule.num_agent_steps == 1_550_000 and data.replay_settings.batch_size == 256
    assert data.hparams_initial["n_step"] == 3  # what a logger logs
    sac = DMCDataModule(task="cheetah_run", image_size=32, render_quality="fast")  # learner: SAC lineage
    assert (sac.hparams["action_repeat"], sac.hparams["n_step"], sac.hparams["batch_size"]) == (4, 1, 128)
    assert sac.schedule == dataclasses.replace(
        sac.schedule, num_agent_steps=500_000, init_steps=1000, update_every_steps=1, warmup_burst=True
    )
    module = AgentModule(algorithm="drqv2", task="cheetah_run", **SMALL)
    assert module.agent.config.stddev_steps == module.hparams["drqv2"]["stddev_steps"] == 500_000
    assert AgentModule(algorithm="drqv2", **SMALL).agent.config.stddev_steps == 100_000  # no task: easy
    assert AgentModule(algorithm="sgqn", task="cheetah_run", **SMALL).hparams["drqv2"]["stddev_steps"] is None
    callback = EvaluationCallback()
    callback.setup(SimpleNamespace(datamodule=data), module, "fit")  # type: ignore[arg-type]
    assert callback.every_agent_steps == callback.cadence.every == callback.cadence.next == 5000
    callback = EvaluationCallback()
    callback.setup(SimpleNamespace(datamodule=sac), AgentModule(task="cheetah_run", **SMALL), "fit")  # type: ignore[arg-type]
    assert callback.every_agent_steps == 10_000


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
