"""The errors `sgqn` reports in one line, and the "did you mean" of its messages (no heavy imports: the
`sgqn` command reads them before it knows which subcommand runs)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the option and the fix."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """`` (did you mean 'a', 'b'?)`` for the choices close to `word`, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


__all__ = ["ConfigError", "did_you_mean"]
