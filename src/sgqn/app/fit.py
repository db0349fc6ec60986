"""`sgqn fit`: LightningCLI over the agent's LightningModule and `DMCDataModule`, with our checks,
run names, progress bar and resume.

sgqn fit --model.algorithm sgqn --data.task walker_walk --data.num_agent_steps 100000
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sgqn.app.quiet import quiet_dependencies

quiet_dependencies()  # before the imports below, which warn at import time

from jsonargparse._actions import _ActionPrintConfig  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402

from sgqn.algorithms import ALGORITHMS  # noqa: E402
from sgqn.app.arguments import SGQNArgumentParser, TrainerHelpAction  # noqa: E402
from sgqn.app.callbacks import EnvStepCheckpoint, TrainingProgress  # noqa: E402
from sgqn.app.checkpointing import (  # noqa: E402
    GlobalRngState,
    LongerRun,
    conflicts_message,
    find_last_checkpoint,
    kept_replay_capacity,
    load_checkpoint_file,
    resume_conflicts,
)
from sgqn.app.console import fit_summary  # noqa: E402
from sgqn.app.dead_runs import mark_dead_runs_of  # noqa: E402
from sgqn.app.eval_callback import EvaluationCallback  # noqa: E402
from sgqn.app.progress import with_progress_bar  # noqa: E402
from sgqn.app.ranges import check_seed  # noqa: E402
from sgqn.app.store import absolute_uri, holds_run, missing_store  # noqa: E402
from sgqn.app.tracking import MLflowSaveConfig, RecordRunId, SGQNMLFlowLogger, name_run, run_name, run_tags  # noqa: E402
from sgqn.app.validation import (  # noqa: E402
    ConfigError,
    check_free_disk,
    checkpoint_bytes,
    resolved_data_params,
    validate_fit_config,
)
from sgqn.data.datamodule import DMCDataModule  # noqa: E402
from sgqn.envs.tasks import REFERENCE_OPTIONS, TASK_DEFAULTS, resolve_settings  # noqa: E402
from sgqn.training.module import AgentModule  # noqa: E402


class SGQNCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()
        self.started_at = time.time()  # the run name's timestamp
        self.resume: Resume | None = None  # the checkpoint resumed from (`_parse_ckpt_path`)
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only `fit`: the module has no validation/test/predict step, so Lightning's `validate`, `test`
        # and `predict` could only crash; evaluation is `sgqn evaluate` and the `eval` callback.
        return {"fit": LightningCLI.subcommands()["fit"]}

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # `--print_config` prints the options left None as what they resolve to (`resolve_reference_options`):
        # jsonargparse would print them while parsing, before any hook; they are printed here instead.
        with _ActionPrintConfig.skip_print_config():
            super().parse_arguments(parser, args)
        if _ActionPrintConfig.is_print_config_requested(parser):
            if self.config.get("subcommand") == "fit":
                resolve_reference_options(self.config["fit"])
            _ActionPrintConfig.print_config_if_requested(parser, self.config)

    def _set_seed(self) -> None:
        # Lightning seeds before `before_instantiate_classes`, and fails on a seed numpy refuses with a
        # traceback: the seed is checked first.
        if self.subcommand == "fit":
            check_seed(self.config["fit"]["data"].get("seed"))
        super()._set_seed()

    def _parse_ckpt_path(self) -> None:
        # Lightning's version loads the whole checkpoint (replay included) to re-apply its hyper-parameters,
        # and fails on a corrupt file with torch's advice to load it unsafely. A resume is the same command
        # line: we only find the checkpoint, check it, and point the logger and checkpoints at its run
        # (`after_instantiate_classes` compares the settings built with the checkpoint's).
        if self.config.get("subcommand") == "fit":
            self.resume = resume_from_checkpoint(self.config["fit"])

    def before_instantiate_classes(self) -> None:
        # Before any env, trainer or MLflow run exists: a bad value fails in a second, leaving no run.
        if self.subcommand == "fit":
            # The options left None become the learner's reference for the task: what is checked,
            # built, saved as config.yaml and logged as params.
            resolve_reference_options(self.config["fit"])
            validate_fit_config(self.config["fit"])

    def after_instantiate_classes(self) -> None:
        if self.subcommand != "fit":
            return
        # Still before the MLflow run: it is created lazily, when training starts.
        config = self.config["fit"]
        if self.resume is not None:  # the settings built are the checkpoint's, but for what may change
            conflicts = resume_conflicts(self.resume.hparams, self.model.hparams, self.datamodule.hparams)
            if conflicts:
                raise ConfigError(conflicts_message(f"checkpoint {self.resume.path}", conflicts))
            print(f"sgqn: resuming {self.resume.path} (MLflow run {self.resume.run_id})", file=sys.stderr)
        parameters = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        every = config["checkpoint"]["every_agent_steps"]
        saves = (config["data"]["num_agent_steps"] // every if every > 0 else 1) + 1  # + last.ckpt
        folder = config["checkpoint"]["dirpath"] or config["trainer"]["default_root_dir"]
        option = "--checkpoint.dirpath" if config["checkpoint"]["dirpath"] else "--trainer.default_root_dir"
        check_free_disk(folder, saves * checkpoint_bytes(parameters, trainable), option)
        mark_dead_runs_of(self.trainer)  # earlier runs of this output folder whose process died

        env, algorithm = self.datamodule.env_settings, self.model.config.algorithm
        name = run_name(algorithm, env.task, f"s{env.seed}", when=self.started_at)
        tags = run_tags(algorithm, env.task, env.seed)
        resolved = resolved_data_params(
            dict(self.datamodule.hparams) | {"overlay_root": self.model.overlay_root}
        )
        resolved["eval_every_agent_steps"] = config["eval"]["every_agent_steps"]  # resolved before
        if algorithm in ("sgqn", "drqv2_sgqn"):
            resolved["quantile"] = self.model.quantile  # the task's rho when the config says null
        for logger in self.trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                name_run(logger, name, tags)
            if isinstance(logger, SGQNMLFlowLogger):
                logger.resolved_params.update(resolved)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, self.started), flush=True)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Lightning's default bar counts batches; ours counts agent steps (`sgqn.app.progress`).
        config = self._get(self.config_init, "trainer", default={})
        every = self._get(self.config_init, "progress").print_every_agent_steps
        kwargs.setdefault("callbacks", with_progress_bar(config, every))
        return super().instantiate_trainer(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `sgqn fit --help` lists the package's options; Lightning's trainer options are behind this flag.
        parser.add_argument(
            "--help-trainer", action=TrainerHelpAction, help="show Lightning's Trainer options and exit"
        )
        # The networks' shapes come from the env the data module builds.
        parser.link_arguments("data.observation_shape", "model.observation_shape", apply_on="instantiate")
        parser.link_arguments("data.action_dim", "model.action_dim", apply_on="instantiate")
        parser.link_arguments("data.places_root", "model.overlay_root")  # one image source for both
        parser.link_arguments("model.discount", "data.discount")  # the n-step replay sums with the same γ
        parser.link_arguments("data.task", "model.task")  # the task's default rho (`sgqn.envs.TASK_DEFAULTS`)
        # The data module's options left None are the learner's reference (`resolve_reference_options`).
        parser.link_arguments("model.algorithm", "data.learner", compute_fn=learner_of)
        # One seed per run: `--data.seed N` also seeds torch (network init, warm-up actions, augmentation
        # and policy noise); otherwise runs "of different seeds" would share all of those.
        parser.link_arguments("data.seed", "seed_everything")
        parser.add_lightning_class_args(EvaluationCallback, "eval")
        parser.add_lightning_class_args(TrainingProgress, "progress")
        parser.add_lightning_class_args(EnvStepCheckpoint, "checkpoint")
        parser.add_argument(
            "--resume",
            type=Literal["never", "auto"],
            default="never",
            help="auto: continue the newest run whose last.ckpt lies under trainer.default_root_dir (or "
            "checkpoint.dirpath) if there is one, else start a new run: the same command line, re-run "
            "after a preemption, picks up where it stopped. `--ckpt_path last` does the same but fails "
            "when there is nothing to resume; `--ckpt_path FILE` resumes from that checkpoint.",
        )
        parser.set_defaults(
            {
                "trainer.logger": {"class_path": "sgqn.app.tracking.SGQNMLFlowLogger"},
                # One epoch = the whole run: the data stream ends after `data.num_agent_steps` agent steps.
                "trainer.max_epochs": 1,
                "trainer.max_steps": -1,
                "trainer.num_sanity_val_steps": 0,
                "trainer.log_every_n_steps": 100,
                "trainer.accelerator": "auto",
                "trainer.default_root_dir": "outputs",
            }
        )


def learner_of(algorithm: str) -> str:
    """The value learner of an algorithm (``sgqn`` → ``sac``, ``drqv2_sgqn`` → ``drqv2``)."""
    return ALGORITHMS[algorithm][0] if algorithm in ALGORITHMS else "sac"


def resolve_reference_options(config: Any) -> dict[str, Any]:
    """Fill the options of a parsed `sgqn fit` config (`cli.config["fit"]`) left None that mean "the
    learner's reference for the task" (`sgqn.envs.tasks.REFERENCE_OPTIONS`: ``--data.n_step``,
    ``--data.batch_size``, ``--data.num_agent_steps``, ``--eval.every_agent_steps``,
    ``--model.drqv2.stddev_steps``, …) with `sgqn.envs.tasks.resolve_settings`, in place; an explicit
    value is kept. Returns option → value. An unknown task resolves without its per-task settings (the
    validation that follows names it)."""
    task = config["data"]["task"]
    given = {option: config.get(option) for option in REFERENCE_OPTIONS}
    resolved = resolve_settings(
        learner_of(config["model"]["algorithm"]), task if task in TASK_DEFAULTS else None, given
    )
    for option, value in resolved.items():
        if option in config:
            config[option] = value
    return resolved


@dataclass
class Resume:
    """The checkpoint a `sgqn fit` resumes from: its path, MLflow run and hyper-parameters (compared with
    those of the module and data module built, `sgqn.app.checkpointing.resume_conflicts`)."""

    path: str
    run_id: str
    hparams: dict[str, Any]


def resume_from_checkpoint(config: Any) -> Resume | None:
    """Resolve `--ckpt_path last|FILE` / `--resume auto` into the checkpoint to load, and point the MLflow
    logger at the run that checkpoint belongs to (reopened, never a new run) and the checkpoint callback
    at its folder; the replay keeps the checkpoint's capacity. A missing or corrupt checkpoint, or another
    MLflow tracking URI or experiment than the run's, is a one-line `ConfigError`. None: a new run."""
    ckpt, root = (
        config.get("ckpt_path"),
        config["checkpoint"]["dirpath"] or config["trainer"]["default_root_dir"],
    )
    if ckpt == "last" or (ckpt is None and config.get("resume") == "auto"):
        found = find_last_checkpoint(root)
        if found is None:
            if ckpt == "last":
                raise ConfigError(f"--ckpt_path last: no last.ckpt under {root}; nothing to resume")
            return None  # --resume auto with nothing to resume: a new run
        ckpt = str(found)
    if ckpt is None:
        return None
    checkpoint = load_checkpoint_file(ckpt, map_location="cpu", mmap=True)
    run: dict[str, Any] = checkpoint.get("mlflow") or {}
    logger = config["trainer"].get("logger")
    init_args = None
    if run and logger is not None and not isinstance(logger, bool | list):
        init_args = logger["init_args"]
        check_same_tracking(f"checkpoint {ckpt}", run, init_args)
    # Nothing is changed before the checks above.
    config["ckpt_path"] = ckpt
    config["checkpoint"]["dirpath"] = str(Path(ckpt).resolve().parent)
    if init_args is not None:
        init_args["run_id"] = run["run_id"]
        init_args["tracking_uri"] = init_args.get("tracking_uri") or run["tracking_uri"]
    capacity = kept_replay_capacity(checkpoint)
    if "data" in config and config["data"].get("replay_capacity") is None and capacity is not None:
        config["data"]["replay_capacity"] = capacity  # a longer run does not grow the checkpointed replay
    hparams = {key: checkpoint.get(key) or {} for key in ("hyper_parameters", "datamodule_hyper_parameters")}
    return Resume(ckpt, run.get("run_id", "unknown"), hparams)


def check_same_tracking(where: str, run: dict[str, Any], init_args: Any) -> None:
    """A resume logs into the checkpoint's run: a tracking URI given for it must be the run's store (or
    one that holds the run, e.g. the database moved), an experiment name the run's; else a one-line
    `ConfigError`, as when the store the checkpoint names is gone and no other is given."""
    recorded, run_id = run["tracking_uri"], run["run_id"]
    uri = init_args.get("tracking_uri")
    conflicts = []
    if uri and absolute_uri(uri) != absolute_uri(recorded) and not holds_run(uri, run_id):
        conflicts.append(f"tracking_uri {recorded!r} → {uri!r}")
    name = init_args.get("experiment_name")
    if name and run.get("experiment_name") and name != run["experiment_name"]:
        conflicts.append(f"experiment_name {run['experiment_name']!r} → {name!r}")
    if conflicts:
        raise ConfigError(
            f"{where} belongs to MLflow run {run_id} with other logger settings: "
            f"trainer.logger.init_args.{', trainer.logger.init_args.'.join(conflicts)}; a resume logs into "
            "that run: leave them out or give the run's"
        )
    if not uri and missing_store(recorded):
        raise ConfigError(
            f"{where} belongs to MLflow run {run_id} in {absolute_uri(recorded)}, which does not exist; "
            "give the store that holds the run with --trainer.logger.init_args.tracking_uri"
        )


def cli_main(args: Sequence[str] | None = None, cli_class: type[SGQNCLI] = SGQNCLI) -> SGQNCLI:
    return cli_class(
        AgentModule,
        DMCDataModule,
        save_config_callback=MLflowSaveConfig,
        parser_kwargs={"prog": "sgqn", "parser_mode": "omegaconf", "default_env": False},
        parser_class=SGQNArgumentParser,
        # The module optimises manually with several optimizers: Lightning's `--optimizer` /
        # `--lr_scheduler` flags would replace them with one and crash.
        auto_configure_optimizers=False,
        # Atomic checkpoint writes; the MLflow run id and the global RNGs go into every checkpoint; a
        # finished run resumed with a longer run length continues (`LongerRun`). The plugin is a class
        # path: jsonargparse cannot serialise an instance and warned on every run.
        trainer_defaults={
            "callbacks": [RecordRunId(), GlobalRngState(), LongerRun()],
            "plugins": [{"class_path": "sgqn.app.checkpointing.AtomicCheckpointIO"}],
        },
        args=None if args is None else list(args),
    )


class _Checked(Exception):
    """Raised once a configuration has passed every check `sgqn fit` makes before creating anything."""


class _CheckOnlyCLI(SGQNCLI):
    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        raise _Checked


def check_fit_args(args: Sequence[str]) -> None:
    """Parse and validate `sgqn fit` arguments exactly as `sgqn fit` would, creating nothing (no env, no
    trainer, no MLflow run). Raises `ConfigError` (or exits 2 on a parse error, after printing it)."""
    try:
        cli_main(["fit", *args], cli_class=_CheckOnlyCLI)
    except _Checked:
        return
    raise AssertionError("the check-only CLI always stops before instantiating")  # pragma: no cover


__all__ = [
    "SGQNCLI",
    "Resume",
    "check_fit_args",
    "check_same_tracking",
    "cli_main",
    "learner_of",
    "resolve_reference_options",
    "resume_from_checkpoint",
]
