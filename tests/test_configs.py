"""Every shipped experiment config composes into the settings its path names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sgqn.cli import cli_main

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p for algo in ("sac", "svea", "sgqn") for p in (CONF / algo).glob("*.yaml"))


def resolved(capsys: pytest.CaptureFixture, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_algorithm_has_every_task() -> None:
    tasks = {p.stem for p in (CONF / "data").glob("*.yaml")}
    assert len(tasks) >= 8
    for algo in ("sac", "svea", "sgqn"):
        assert {p.stem for p in (CONF / algo).glob("*.yaml")} == tasks


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiment_composes(path: Path, capsys: pytest.CaptureFixture) -> None:
    config = resolved(capsys, "-c", str(path))
    algo, task = path.parent.name, path.stem
    assert config["model"]["algorithm"] == algo and config["data"]["task"] == task
    assert config["model"]["num_conv_layers"] == 11 and config["data"]["batch_size"] == 128
    if algo == "sgqn":
        expected = 0.98 if task.startswith(("cartpole", "ball_in_cup")) else 0.95
        assert config["model"]["quantile"] == expected
    assert config["trainer"]["logger"]["class_path"].endswith("SGQNMLFlowLogger")


def test_command_line_overrides_win(capsys: pytest.CaptureFixture) -> None:
    config = resolved(
        capsys, "-c", str(CONF / "sgqn" / "walker_walk.yaml"), "--model.quantile", "0.9", "--data.seed", "3"
    )
    assert config["model"]["quantile"] == 0.9 and config["data"]["seed"] == 3


def test_data_seed_also_seeds_torch() -> None:
    import torch
    from lightning.pytorch.cli import LightningCLI

    from sgqn.cli import SGQNCLI
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
