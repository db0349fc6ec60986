"""Filters for the dependencies' known console noise: only these messages, never whole loggers or
warning categories. Imports nothing heavy, so the entry point installs it before Lightning & co."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable


class _DropMessages(logging.Filter):
    def __init__(self, patterns: Iterable[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


# logger name → messages that say nothing to a researcher on every run
NOISY_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": (
        r"Tip: .*litlogger",  # an advert for Lightning's cloud logger
        r"^TPU available: False",
        r"^HPU available: False",
        # one epoch is the whole run here (the stream ends after `data.num_agent_steps`): the normal end
        r"^`Trainer\.fit` stopped: `max_epochs=1` reached",
    ),
    # "Seed set to 0" before any check: a bad value's error would not be the one line on stderr (the seed
    # is in the run's name, tags and params)
    "lightning.fabric.utilities.seed": (r"Seed set to -?\d+$",),
    "lightning.pytorch.loggers.mlflow": (r"^Experiment with name .* not found\. Creating it\.",),
    "mlflow.store.db.utils": (r"^Creating initial MLflow database tables", r"^Updating database tables"),
    "alembic.runtime.migration": (r"^Context impl ", r"^Will assume ", r"^Running upgrade "),
    "torchrl": (r"^Initialized Lazy(Tensor|Memmap)Storage",),  # colour-coded lines, on every run
}
NOISY_WARNINGS: tuple[str, ...] = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's _pytree vs torch 2.13
    r"pkg_resources is deprecated",
    r"LightningCLI's args parameter is intended to run from within Python",  # we pass argv on purpose
    # the module pulls its batches itself on purpose (no prefetch: exact resume, see AgentModule.training_step)
    r"Found `dataloader_iter` argument in the `training_step`",
    r"You are using the `dataloader_iter` step flavor",  # Lightning 2.6's wording of the same warning
)


def quiet_dependencies() -> None:
    """Drop the known noise (idempotent). Filters sit on the emitting loggers, so they hold whatever
    handlers the libraries install later."""
    for name, patterns in NOISY_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(patterns))
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


__all__ = ["NOISY_LOG_MESSAGES", "NOISY_WARNINGS", "quiet_dependencies"]
