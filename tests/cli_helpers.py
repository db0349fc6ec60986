"""Helpers of the tests that run `sgqn fit` in-process on conf/tiny.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient

TINY = str(Path(__file__).resolve().parents[1] / "conf" / "tiny.yaml")


def fit_args(root: Path, *extra: str, config: str = TINY) -> list[str]:
    """`sgqn fit -c config` (the tiny one by default), tracked in `<root>/mlflow.db`, outputs under
    `<root>/outputs`."""
    return [
        "fit",
        "-c",
        config,
        "--trainer.logger.init_args.tracking_uri",
        f"sqlite:///{root}/mlflow.db",
        "--trainer.default_root_dir",
        str(root / "outputs"),
        *extra,
    ]


def short_run(num_agent_steps: int, checkpoint_every: int) -> list[str]:
    """Overrides for a run of a few seconds: 20 warm-up steps, then one update per agent step, one
    final evaluation episode in the train env only, no saliency pictures or videos."""
    return [
        "--data.num_agent_steps", str(num_agent_steps),
        "--data.init_steps", "20",
        "--eval.every_agent_steps", "0",
        "--eval.modes", "[train]",
        "--eval.saliency_every_evals", "0",
        "--eval.video_every_evals", "0",
        "--checkpoint.every_agent_steps", str(checkpoint_every),
    ]  # fmt: skip


def all_runs(root: Path) -> list[Any]:
    """Every MLflow run in `<root>/mlflow.db` (none when the store was never created)."""
    if not (root / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []
