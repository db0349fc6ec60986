"""`sgqn fit`'s argument parser: LightningCLI's, with the package's own options first in its help, one-line
errors that suggest near option names, and one line naming the new name of a renamed option."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from sgqn.app.console import fail, one_line
from sgqn.app.errors import did_you_mean

_UNRECOGNIZED = re.compile(r"unrecognized arguments?:?\s*(.*)", re.IGNORECASE | re.DOTALL)
_AMBIGUOUS = re.compile(r"ambiguous option:\s*(--[\w.-]+)", re.IGNORECASE)
# unknown keys in a config file: "Group 'model' does not accept option 'quantile'", "Subcommand 'fit' does
# not accept nested key 'foo'", "Option 'foo' is not accepted"
_UNKNOWN_KEY = re.compile(
    r"""(?:Group\s+["']([\w.]+)["']\s+)?does not accept (?:option|nested key)\s+["']([\w.]+)["']""",
    re.IGNORECASE,
)
_NOT_ACCEPTED = re.compile(r"""Option\s+["']([\w.]+)["']\s+is not accepted""", re.IGNORECASE)  # top-level key
# a value of the wrong type: 'Parser key "model.algorithm": Expected a typing.Literal['sac', …]. Got value: sqgn'
_BAD_VALUE = re.compile(r"""Parser key\s+["']([\w.]+)["']:\s*(.*?)(?:Got|Given) value:\s*(.*)""", re.DOTALL)
# `--model.sac.actor_lr -1e-3`: argparse takes a value starting with "-" for an option
_NO_VALUE = re.compile(r"argument (--[\w.]+)(?:/[-\w]+)?: expected one argument")
_LITERAL = re.compile(r"Literal\[([^\]]*)\]")
_LIST = re.compile(r"Expected a <class 'list'>")

# --------------------------------------------------------------------------- renamed options

_NET = ("num_conv_layers", "num_filters", "feature_dim", "hidden_dim", "actor_hidden_dim")
_SAC = (
    "actor_lr", "actor_beta", "critic_lr", "critic_beta", "alpha_lr", "alpha_beta", "init_temperature",
    "actor_update_freq", "critic_target_update_freq", "critic_tau", "encoder_tau", "actor_log_std_min",
    "actor_log_std_max", "shift_pad",
)  # fmt: skip
_DRQV2_TOO = ("actor_lr", "critic_lr", "critic_tau", "shift_pad")  # SAC's names that DrQ-v2 has too
_SGQN = (
    "quantile", "consistency_weight", "aux_lr", "aux_beta", "aux_update_freq", "mask_zero_ties", "decoder_channels",
)  # fmt: skip
_DRQV2 = ("stddev_init", "stddev_final", "stddev_steps", "stddev_clip")


def _renamed(new: str) -> str:
    return f"renamed --{new}"


# Every option the redesign (#22) renamed or removed, by its old key (`--data.num_env_steps` on the command
# line, `data: {num_env_steps: ...}` in a config file) → the rest of the one-line error: "--<old> was <…>".
RENAMED: dict[str, str] = {
    "data.num_env_steps": _renamed("data.num_agent_steps"),
    "eval.every_env_steps": _renamed("eval.every_agent_steps"),
    "checkpoint.every_env_steps": _renamed("checkpoint.every_agent_steps"),
    "progress.every_env_steps": _renamed("progress.every_agent_steps"),
    "progress.print_every_env_steps": _renamed("progress.print_every_agent_steps"),
    **{f"model.{name}": _renamed(f"model.net.{name}") for name in _NET},
    **{f"model.{name}": _renamed(f"model.sac.{name}") for name in _SAC},
    **{
        f"model.{name}": _renamed(f"model.sac.{name}") + f" (sac, svea, sgqn) or --model.drqv2.{name} "
        "(drqv2, drqv2_sgqn)"
        for name in _DRQV2_TOO
    },
    **{f"model.{name}": _renamed(f"model.sgqn.{name}") for name in _SGQN},
    "model.svea_alpha": _renamed("model.svea.alpha"),
    "model.svea_beta": _renamed("model.svea.beta"),
    **{f"model.{name}": _renamed(f"model.drqv2.{name}") for name in _DRQV2},
    "model.speed.compile": "removed: --model.speed.compile_update now compiles the whole update",
}


def renamed_option(option: str) -> str | None:
    """``--model.quantile`` (or ``model.quantile``, ``--model.quantile=0.9``) → ``--model.quantile was
    renamed --model.sgqn.quantile``; None for an option that was never renamed."""
    key = option.split("=", 1)[0].lstrip("-")
    return f"--{key} was {RENAMED[key]}" if key in RENAMED else None


# --------------------------------------------------------------------------- unknown options


def suggest_options(typed: str, options: Iterable[str], n: int = 4) -> list[str]:
    """Options close to `typed`: ``--model.lr`` → ``--model.sac.actor_lr``, ``--model.sac.critic_lr``, … .

    First the options of the typed group, then of its subgroups (``--model.sac.*``, ``--model.sgqn.*``):
    names containing the typed leaf (``lr`` is in ``actor_lr``), then difflib's close matches of the leaf;
    across groups only when neither has any (``--modle.sgqn.quantile`` → ``--model.sgqn.quantile``).
    """
    typed = typed.split("=", 1)[0]
    options = [o for o in options if o.startswith("--") and not o.endswith((".help", "--help", "+"))]
    group, _, leaf = typed.lstrip("-").rpartition(".")

    def near(pool: list[str]) -> list[str]:
        leaves: dict[str, list[str]] = {}  # leaf → its options, in the parser's order
        for option in pool:
            leaves.setdefault(option.lstrip("-").rpartition(".")[2], []).append(option)
        names = [k for k in sorted(leaves) if leaf and leaf in k and k != leaf]
        names += difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.6)
        names = list(dict.fromkeys(names))
        # one option per name first (actor_lr of SAC before DrQ-v2's), then the others
        return [leaves[k][0] for k in names] + [o for k in names for o in leaves[k][1:]]

    parent = [o.lstrip("-").rpartition(".")[0] for o in options]
    found = near([o for o, p in zip(options, parent, strict=True) if p == group])
    if not found and group:
        found = near([o for o, p in zip(options, parent, strict=True) if p.startswith(group + ".")])
    if not found:
        found = difflib.get_close_matches(typed, options, n=n, cutoff=0.75)
    return list(dict.fromkeys(found))[:n]


def typed_options(message: str) -> list[str]:
    """The options an error message of the parser complains about, as ``--group.name``."""
    match = _UNRECOGNIZED.search(message)
    if match:
        return [w for w in match.group(1).split() if w.startswith("--")]
    match = _AMBIGUOUS.search(message)
    if match:
        return [match.group(1)]
    keys = [f"{group}.{key}" if group else key for group, key in _UNKNOWN_KEY.findall(message)]
    return [f"--{key}" for key in keys + _NOT_ACCEPTED.findall(message)]


def _choices(literal: str) -> list[str]:
    """``'sac', 'svea', 1`` (the inside of a ``Literal[…]``) → ``["sac", "svea", "1"]``."""
    return [c.strip().strip("'\"") for c in literal.split(",") if c.strip()]


def bad_value(message: str) -> str | None:
    """A one-line error for a value of the wrong type or outside a Literal's choices (jsonargparse's says
    ``Parser key "model.algorithm": Expected a typing.Literal[...]. Got value: sqgn`` over several lines):
    the option, the value, the near choices and the valid ones. None for any other message."""
    missing = _NO_VALUE.search(message)
    if missing:
        option = missing.group(1)
        return f"{option} needs a value (one that starts with '-', as -1e-3, is written {option}=VALUE)"
    match = _BAD_VALUE.search(message)
    if match is None:
        return None
    key, expected, value = match.group(1), match.group(2), match.group(3).strip()
    option = f"--{key}"
    literal = _LITERAL.search(expected)
    if literal:
        choices = _choices(literal.group(1))
        return (
            f"{option}: invalid choice {value!r}{did_you_mean(value, choices)}; valid: {', '.join(choices)}"
        )
    if key == "eval.modes":
        from sgqn.app.validation import valid_modes
        from sgqn.envs import MODES

        if value in MODES:
            return f"{option} takes a list of modes: {option} '[{value}]' (a YAML list in a config file)"
        return (
            f"{option} takes a list of modes, e.g. {option} '[train,video_hard]' (a YAML list in a config "
            f"file), not {value!r}{did_you_mean(value, MODES)}; valid modes: {valid_modes()}"
        )
    if _LIST.search(expected):
        return f"{option} takes a list, e.g. {option} '[a,b]' (a YAML list in a config file), not {value!r}"
    types = list(dict.fromkeys(re.findall(r"Expected a <class '(\w+)'>", expected)))
    if types:
        names = " or ".join("null" if t == "NoneType" else t for t in types)
        return f"{option}: expected {names}, got {value!r}"
    return None


def _with_suggestions(message: str, options: list[str]) -> str:
    hints = []
    for word in typed_options(message):
        close = suggest_options(word, options)
        if close:
            hints.append(f"{word.split('=', 1)[0]}: did you mean {', '.join(close)}?")
    return message if not hints else f"{message} ({'; '.join(hints)})"


# --------------------------------------------------------------------------- `sgqn fit --help`

TRAINER = "trainer"
# The package's option groups, in the order `sgqn fit --help` lists them (subgroups follow their group:
# model.net, model.sac, …); Lightning's trainer options are behind `--help-trainer`.
OWN_GROUPS = ("model", "data", "eval", "checkpoint", "progress")
FIT_METHOD = "fit"  # the group of `Trainer.fit`'s arguments (--ckpt_path, --weights_only)
FIT_METHOD_TITLE = "resuming (Lightning's Trainer.fit: `--resume auto` finds the checkpoint itself)"

FIT_USAGE = """\
{prog} [-h] [--help-trainer] [-c CONFIG] [--print_config[=flags]]
       [--model.algorithm {{sac,svea,sgqn,drqv2,drqv2_sgqn}}] [--data.task TASK]
       [--data.num_agent_steps N] [--eval.modes [MODE,...]] [--GROUP.OPTION VALUE ...]
       [--resume {{never,auto}}] [--ckpt_path CKPT_PATH]"""

FIT_DESCRIPTION = """\
Train one agent on one DMC task, evaluate it in DMC-GB's test modes and track it
all in MLflow:

  sgqn fit -c conf/quickstart.yaml         (SGQN on cartpole_swingup, ~5 min)
  sgqn fit -c conf/quickstart.yaml --model.algorithm svea --data.seed 1
  sgqn fit --model.algorithm sgqn --data.task walker_walk \\
      --data.num_agent_steps 500000 --eval.modes '[train,color_hard,video_hard]'

The options below, by group (each is also a key of a -c YAML file:
--model.sgqn.quantile 0.9 is `model: {sgqn: {quantile: 0.9}}`):
  --model.*       the algorithm (--model.algorithm) and its settings by group:
                  --model.net.* (the networks), --model.sac.*, --model.svea.*,
                  --model.sgqn.*, --model.drqv2.*, --model.speed.*
  --data.*        the task (--data.task), the budget (--data.num_agent_steps),
                  the env, the replay and the batches
  --eval.*        when, how long and in which modes (--eval.modes) to evaluate
  --checkpoint.*  how often (in agent steps) and where to save checkpoints
  --progress.*    the progress line and the progress metrics logged to MLflow
  --resume, --ckpt_path  continue a run
Lightning's Trainer options (accelerator, devices, precision, the MLflow logger,
the output folder, ...) are listed by `sgqn fit --help-trainer`."""

FIT_EPILOG = """\
Lightning's Trainer options (--trainer.accelerator, --trainer.devices, --trainer.precision,
--trainer.logger, --trainer.default_root_dir, ...): `sgqn fit --help-trainer`."""

TRAINER_USAGE = "{prog} [--trainer.OPTION VALUE ...]"

TRAINER_DESCRIPTION = """\
Lightning's Trainer options, given as --trainer.OPTION VALUE or under `trainer:`
in a -c YAML file. sgqn's defaults (shown below) differ from Lightning's: one
epoch is the whole run (max_epochs 1; its length is --data.num_agent_steps), the
logger is sgqn's MLflow logger (its options: `sgqn fit --trainer.logger.help
SGQNMLFlowLogger`) and the outputs go to ./outputs. `sgqn fit --help` lists
sgqn's own options."""


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help (types and defaults after each option), with the description's and epilog's
    line breaks kept (their examples and lists)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class TrainerHelpAction(argparse._HelpAction):
    """``--help-trainer``: only Lightning's trainer options, which `sgqn fit --help` leaves out."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        assert isinstance(parser, SGQNArgumentParser)
        sys.stdout.write(parser.format_help(trainer=True))
        parser.exit()


class SGQNArgumentParser(LightningArgumentParser):
    """LightningCLI's parser. `sgqn fit --help` lists the package's own groups first (an overview, then
    model, data, eval, checkpoint, progress) and leaves Lightning's trainer options to ``--help-trainer``.
    An error is one line, the error first and alone (jsonargparse prints a hundred-line usage first): an
    unknown option with the near names (options are never abbreviated), or a pointer to ``--help``; a
    renamed option with its new name; a value of the wrong type or outside its choices with the valid ones.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        # Exact names only: argparse would take `--model.sgqn.quantil` for `--model.sgqn.quantile` (and
        # `--data.tas` for `--data.task`); a typo must fail with the near names instead.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # parsers used internally (e.g. nested types) must raise as usual
            super().error(message, ex)
        renamed = [m for m in map(renamed_option, typed_options(message)) if m]
        if renamed:
            fail("; ".join(dict.fromkeys(renamed)))
        value = bad_value(message)
        if value:
            fail(one_line(value))
        parser = getattr(ex, "subcommand_parser", None) or _only_subcommand(self)
        options = list(getattr(parser, "_option_string_actions", {}))
        prog = parser.prog.replace(" [options]", "")
        line = one_line(_with_suggestions(message, options))
        if "did you mean" not in line:
            line += f"; see `{prog} --help` for the valid options"
        fail(line)

    def format_help(self, formatter: Any = None, trainer: bool = False) -> str:
        """The help of `sgqn fit`, laid out as the class says; any other parser's as jsonargparse's."""
        by_key: dict[str, argparse._ArgumentGroup] = dict(self.groups or {})
        keys = {id(group): key for key, group in by_key.items()}
        if TRAINER not in keys.values():
            return super().format_help() if formatter is None else super().format_help(formatter)

        def rank(group: argparse._ArgumentGroup) -> tuple[int, int]:
            top = keys.get(id(group), "").split(".")[0]
            if group in (self._positionals, self._optionals):  # -h, -c, --print_config, --resume, …
                return (0, 0)
            if top in OWN_GROUPS:
                return (1, OWN_GROUPS.index(top))
            return (2, 0) if top == FIT_METHOD else (3, 0)  # --ckpt_path; then the linked arguments

        def is_trainer(group: argparse._ArgumentGroup) -> bool:
            return keys.get(id(group), "").split(".")[0] == TRAINER

        prog = self.prog.replace(" [options]", "")
        if trainer:
            groups = [g for g in self._action_groups if is_trainer(g)]
            usage, description, epilog = TRAINER_USAGE, TRAINER_DESCRIPTION, None
        else:
            groups = sorted((g for g in self._action_groups if not is_trainer(g)), key=rank)
            usage, description, epilog = FIT_USAGE, FIT_DESCRIPTION, FIT_EPILOG
        usage = usage.format(prog=prog).replace("%", "%%")
        with ExitStack() as stack:
            stack.enter_context(
                _replaced(self, _action_groups=groups, usage=usage, description=description, epilog=epilog)
            )
            if FIT_METHOD in by_key:
                stack.enter_context(_replaced(by_key[FIT_METHOD], title=FIT_METHOD_TITLE))
            return super().format_help() if formatter is None else super().format_help(formatter)


def _only_subcommand(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser of `fit`, where the main parser reports an error of `fit`'s (a bad key in a config file):
    its options are the ones to suggest."""
    action = getattr(parser, "_subcommands_action", None)
    parsers = list(dict.fromkeys(getattr(action, "_name_parser_map", {}).values()))
    return parsers[0] if len(parsers) == 1 else parser


def fit_parser_of(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser of `fit` within LightningCLI's main parser (whose options are `sgqn fit`'s)."""
    return _only_subcommand(parser)


@contextmanager
def _replaced(obj: object, **attributes: Any) -> Iterator[None]:
    saved = {name: getattr(obj, name) for name in attributes}
    try:
        for name, value in attributes.items():
            setattr(obj, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


__all__ = [
    "RENAMED",
    "SGQNArgumentParser",
    "TrainerHelpAction",
    "bad_value",
    "fit_parser_of",
    "renamed_option",
    "suggest_options",
]
