"""Evaluation in the train env and every DMC-GB test mode: during `fit` and from checkpoints.

Returns use the deterministic policy (tanh of the Gaussian mean), on env seeds distinct from training.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

log = logging.getLogger("sgqn.evaluation")
EVAL_SEED_OFFSET = 1_000_000  # eval envs never share initial states with the training env
DEFAULT_MODES = ("train", "color_hard", "video_easy", "video_hard")


@torch.no_grad()
def episode_returns(env: EnvBase, policy: Any, episodes: int) -> list[float]:
    """Undiscounted return of `episodes` full episodes of `policy` in `env`."""
    returns = []
    for _ in range(episodes):
        rollout: TensorDictBase = env.rollout(100_000, policy, break_when_any_done=True)
        returns.append(rollout["next", "reward"].sum().item())
    return returns


def summarize(returns: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(returns)
    return mean, statistics.pstdev(returns) if len(returns) > 1 else 0.0


class EvaluationCallback(Callback):
    """Every `every_env_steps` agent steps (and at the end), evaluate in each mode and log to MLflow.

    Args:
        every_env_steps: evaluation period in agent steps (paper: 10k); 0 disables periodic evaluation.
        episodes: episodes per mode (paper: 10 during training, 100 for final tables).
        modes: ``train`` and/or DMC-GB test modes (see `sgqn.envs.MODES`).
        at_end: also evaluate once when training ends.
    """

    def __init__(
        self,
        every_env_steps: int = 10_000,
        episodes: int = 10,
        modes: list[str] = list(DEFAULT_MODES),  # noqa: B006 (jsonargparse needs a plain default)
        at_end: bool = True,
    ) -> None:
        self.every_env_steps, self.episodes, self.modes, self.at_end = (
            every_env_steps,
            episodes,
            modes,
            at_end,
        )
        self._envs: dict[str, EnvBase] = {}
        self._next = every_env_steps
        self.history: list[dict[str, float]] = []

    def _env(self, trainer: Trainer, mode: str) -> EnvBase:
        if mode not in self._envs:
            dm = trainer.datamodule  # type: ignore[attr-defined]
            self._envs[mode] = dm.make_env(mode=mode, seed=dm.hparams.seed + EVAL_SEED_OFFSET)
        return self._envs[mode]

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        step = trainer.datamodule.stats.env_steps  # type: ignore[attr-defined]
        policy = pl_module.policy_module(deterministic=True)  # type: ignore[operator]
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        for mode in self.modes:
            mean, std = summarize(episode_returns(self._env(trainer, mode), policy, self.episodes))
            metrics[f"eval/{mode}/return_mean"], metrics[f"eval/{mode}/return_std"] = mean, std
        pl_module.train(was_training)
        metrics["eval/seconds"] = time.perf_counter() - start
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.history.append({"env_steps": float(step), **metrics})
        log.info("eval at %d agent steps: %s", step, metrics)
        return metrics

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        steps = trainer.datamodule.stats.env_steps  # type: ignore[attr-defined]
        if self.every_env_steps > 0 and steps >= self._next:
            self._next = steps - steps % self.every_env_steps + self.every_env_steps
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = trainer.datamodule.stats.env_steps  # type: ignore[attr-defined]
        if self.at_end and (not self.history or self.history[-1]["env_steps"] != steps):
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"next": self._next, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._next, self.history = state_dict["next"], state_dict["history"]


# --------------------------------------------------------------------------- `sgqn evaluate`


def evaluate_checkpoint(
    path: str, modes: Sequence[str], episodes: int, seed_offset: int
) -> dict[str, list[float]]:
    """Returns per mode for the policy stored in one checkpoint, with the env settings it trained on."""
    from sgqn.data.stream import DMCDataModule
    from sgqn.module import SGQNModule

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    module = SGQNModule.load_from_checkpoint(path, map_location="cpu")
    module.eval()
    datamodule = DMCDataModule(**checkpoint.get("datamodule_hyper_parameters", {}))
    policy = module.policy_module(deterministic=True)
    seed = datamodule.hparams.seed + seed_offset
    return {m: episode_returns(datamodule.make_env(mode=m, seed=seed), policy, episodes) for m in modes}


def results_table(per_checkpoint: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """One row per mode. One checkpoint: mean ± std over episodes; several (seeds): mean ± std of the
    per-seed means, as DMC-GB tables report."""
    modes = list(next(iter(per_checkpoint.values())))
    rows = []
    for mode in modes:
        if len(per_checkpoint) == 1:
            mean, std = summarize(next(iter(per_checkpoint.values()))[mode])
        else:
            mean, std = summarize([statistics.fmean(r[mode]) for r in per_checkpoint.values()])
        episodes = sum(len(r[mode]) for r in per_checkpoint.values())
        rows.append(
            {
                "mode": mode,
                "return_mean": mean,
                "return_std": std,
                "seeds": len(per_checkpoint),
                "episodes": episodes,
            }
        )
    return rows


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| mode | return | seeds | episodes |", "|---|---|---|---|"]
    lines += [
        f"| {r['mode']} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | {r['seeds']} | {r['episodes']} |"
        for r in rows
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def log_tables_to_runs(checkpoints: Sequence[str], files: Sequence[Path], rows: list[dict[str, Any]]) -> None:
    """Attach the tables (and final metrics) to the MLflow run each checkpoint was trained in."""
    from mlflow import MlflowClient

    for path in checkpoints:
        info = torch.load(path, map_location="cpu", weights_only=False).get("mlflow")
        if not info:
            log.warning("%s records no MLflow run; tables not logged", path)
            continue
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        for file in files:
            client.log_artifact(info["run_id"], str(file), artifact_path="evaluation")
        for row in rows:
            if not math.isnan(row["return_mean"]):
                client.log_metric(info["run_id"], f"final/{row['mode']}/return_mean", row["return_mean"])


def evaluate_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="sgqn evaluate", description="Evaluate checkpoints in the train env and DMC-GB test modes."
    )
    parser.add_argument(
        "--ckpt", nargs="+", required=True, help="checkpoint(s); several = seeds of one method"
    )
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--seed-offset", type=int, default=EVAL_SEED_OFFSET + 1)
    parser.add_argument("--no-log", action="store_true", help="do not attach the tables to the MLflow runs")
    args = parser.parse_args(list(argv))
    per_checkpoint = {
        p: evaluate_checkpoint(p, args.modes, args.episodes, args.seed_offset) for p in args.ckpt
    }
    rows = results_table(per_checkpoint)
    files = write_tables(rows, args.out)
    print(files[1].read_text())
    if not args.no_log:
        log_tables_to_runs(args.ckpt, files, rows)
