"""`sgqn fit`'s argument parser: LightningCLI's, with one-line errors that suggest near option names."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from sgqn.app.console import fail, one_line

_UNRECOGNIZED = re.compile(r"unrecognized arguments?:?\s*(.*)", re.IGNORECASE | re.DOTALL)
# unknown keys in a config file: "Subcommand 'fit' does not accept option 'model.lr'"
_UNKNOWN_KEY = re.compile(r"""does not accept (?:option|nested key)\s+["']([\w.]+)["']""", re.IGNORECASE)


def suggest_options(typed: str, options: Iterable[str], n: int = 4) -> list[str]:
    """Options of the same group close to `typed`: ``--model.lr`` → ``--model.actor_lr``, … .

    Names containing the typed leaf come first (``lr`` is in ``actor_lr``), then difflib's close matches
    of the leaf; across groups only when the group has none (``--modle.quantile`` → ``--model.quantile``).
    """
    typed = typed.split("=", 1)[0]
    options = [o for o in options if o.startswith("--") and not o.endswith((".help", "--help", "+"))]
    group, _, leaf = typed.lstrip("-").rpartition(".")
    siblings = {
        o.lstrip("-").rpartition(".")[2]: o for o in options if o.lstrip("-").rpartition(".")[0] == group
    }
    found = [siblings[k] for k in sorted(siblings) if leaf and leaf in k and k != leaf]
    found += [siblings[k] for k in difflib.get_close_matches(leaf, list(siblings), n=n, cutoff=0.6)]
    if not found:
        found = difflib.get_close_matches(typed, options, n=n, cutoff=0.75)
    return list(dict.fromkeys(found))[:n]


def _with_suggestions(message: str, options: list[str]) -> str:
    typed: list[str] = []
    match = _UNRECOGNIZED.search(message)
    if match:
        typed = [w for w in match.group(1).split() if w.startswith("--")]
    else:
        typed = [f"--{k}" for k in _UNKNOWN_KEY.findall(message)]
    hints = []
    for word in typed:
        close = suggest_options(word, options)
        if close:
            hints.append(f"{word.split('=', 1)[0]}: did you mean {', '.join(close)}?")
    return message if not hints else f"{message} ({'; '.join(hints)})"


class SGQNArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with one-line errors that suggest near option names.

    jsonargparse prints the whole usage (a hundred lines for `fit`) before the error; here the error
    comes first and alone, with a pointer to ``--help``.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # parsers used internally (e.g. nested types) must raise as usual
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        options = list(getattr(parser, "_option_string_actions", {}))
        prog = parser.prog.replace(" [options]", "")
        fail(one_line(_with_suggestions(message, options)), f"see `{prog} --help` for the valid options")


__all__ = ["SGQNArgumentParser", "suggest_options"]
