"""MLflow tracking: a logger with working defaults and the resolved config saved into the run."""

from __future__ import annotations

import os
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3 refuses the plain-folder store (`file:./mlruns`)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


class SGQNMLFlowLogger(MLFlowLogger):
    """Lightning's `MLFlowLogger` defaulting to `sqlite:///mlflow.db` in the working directory.

    Args:
        experiment_name: MLflow experiment (one per study; seeds and algorithms become runs).
        run_name: MLflow run name; ``None`` lets MLflow pick one.
        tracking_uri: any MLflow URI (``sqlite:///…``, ``http://host:5000``); default
            ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        tags: run tags.
        log_model: upload checkpoints as run artifacts (``True``: at the end, ``"all"``: each save).
        artifact_location: where a *new* experiment stores artifacts (default: MLflow's).
        run_id: log into an existing run (resume).
    """

    def __init__(
        self,
        experiment_name: str = "sgqn",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: Literal[True, False, "all"] = True,
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri or default_tracking_uri(),
            tags=tags,
            save_dir=None,
            log_model=log_model,
            artifact_location=artifact_location,
            run_id=run_id,
        )


class MLflowSaveConfig(SaveConfigCallback):
    """Store the fully resolved CLI config as `config.yaml` in the MLflow run (not in a log dir)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False  # MLflow loggers have no log dir with a sqlite/remote store
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_text(logger.run_id, text, "config.yaml")


class RecordRunId(Callback):
    """Write the MLflow run id and tracking URI into every checkpoint, so `sgqn evaluate` can log back."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                checkpoint["mlflow"] = {"run_id": logger.run_id, "tracking_uri": logger._tracking_uri}
