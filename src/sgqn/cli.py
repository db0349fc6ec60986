"""`sgqn fit | validate | test | evaluate` — LightningCLI over `SGQNModule` and `DMCDataModule`.

sgqn fit -c conf/sgqn/walker_walk.yaml --model.quantile 0.9 --data.num_env_steps 100000
sgqn evaluate --ckpt run1.ckpt run2.ckpt --modes train color_hard video_hard --episodes 100
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sgqn.callbacks import EnvStepCheckpoint, TrainingProgress
from sgqn.data.stream import DMCDataModule
from sgqn.evaluation import EvaluationCallback
from sgqn.module import SGQNModule
from sgqn.tracking import MLflowSaveConfig, RecordRunId, SGQNMLFlowLogger


class SGQNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The networks' shapes come from the env the data module builds.
        parser.link_arguments("data.observation_shape", "model.observation_shape", apply_on="instantiate")
        parser.link_arguments("data.action_dim", "model.action_dim", apply_on="instantiate")
        parser.link_arguments("data.places_root", "model.overlay_root")  # one image source for both
        # One seed per run: `--data.seed N` also seeds torch (network init, warm-up actions, augmentation
        # and policy noise); otherwise runs "of different seeds" would share all of those.
        parser.link_arguments("data.seed", "seed_everything")
        parser.add_lightning_class_args(EvaluationCallback, "eval")
        parser.add_lightning_class_args(TrainingProgress, "progress")
        parser.add_lightning_class_args(EnvStepCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "trainer.logger": {"class_path": "sgqn.tracking.SGQNMLFlowLogger"},
                # One epoch = the whole run: the data stream ends after `data.num_env_steps` agent steps.
                "trainer.max_epochs": 1,
                "trainer.max_steps": -1,
                "trainer.num_sanity_val_steps": 0,
                "trainer.log_every_n_steps": 50,
                "trainer.accelerator": "auto",
                "trainer.default_root_dir": "outputs",
            }
        )


def cli_main(args: Sequence[str] | None = None) -> SGQNCLI:
    return SGQNCLI(
        SGQNModule,
        DMCDataModule,
        save_config_callback=MLflowSaveConfig,
        parser_kwargs={"parser_mode": "omegaconf", "default_env": False},
        trainer_defaults={"callbacks": [RecordRunId()]},
        args=None if args is None else list(args),
    )


def main(argv: Sequence[str] | None = None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["evaluate"]:
        from sgqn.evaluation import evaluate_main

        evaluate_main(words[1:])
        return
    cli_main(argv)


__all__ = ["SGQNCLI", "SGQNMLFlowLogger", "cli_main", "main"]
