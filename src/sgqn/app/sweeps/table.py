"""The live console table of a sweep: one row per trial (state, agent steps, latest eval returns)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ray.tune import Callback

from sgqn.app.progress import format_duration
from sgqn.envs.names import mode_order


def format_table(name: str, rows: Sequence[dict[str, Any]], elapsed: float) -> str:
    """Rows: ``trial``, ``state``, ``agent_steps``, ``total_steps``, ``attempt`` and ``eval/<mode>/return_mean``."""
    modes = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("eval/")}, key=mode_order)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    head = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    header = ["trial", "state", "agent steps", *(f"eval {m}" for m in modes), "attempt"]
    lines = []
    for row in rows:
        steps = f"{row.get('agent_steps', 0)}/{row['total_steps']}" if row.get("total_steps") else "-"
        evals = [row.get(f"eval/{m}/return_mean") for m in modes]
        cells = [row["trial"], row["state"], steps, *("-" if v is None else f"{v:.0f}" for v in evals)]
        lines.append([*cells, str(row.get("attempt", "-"))])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    text = [f"[sweep {name}] {format_duration(elapsed)} elapsed: {head}"]
    text += [
        "  " + "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *lines]
    ]
    return "\n".join(text)


class SweepTable(Callback):
    """Prints the table when a trial changes state and at most every `print_every_s` seconds otherwise."""

    def __init__(
        self, name: str, trials: Sequence[str], print_every_s: float = 30.0, stream: TextIO | None = None
    ):
        self.name, self.order, self.print_every_s = name, list(trials), print_every_s
        self.stream = stream
        self.started = time.monotonic()
        self.last_print = -float("inf")
        self.last_states: dict[str, str] = {}

    def rows(self, trials: Sequence[Any]) -> list[dict[str, Any]]:
        by_name = {t.config["spec"]["trial"]: t for t in trials}
        rows = []
        for name in self.order:
            trial = by_name.get(name)
            result = dict(trial.last_result or {}) if trial is not None else {}
            state = trial.status if trial is not None else "PENDING"
            if state == "TERMINATED":
                state = "DONE"
            rows.append({"trial": name, "state": state, **result})
        return rows

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        rows = self.rows(trials)
        states = {r["trial"]: r["state"] for r in rows}
        now = time.monotonic()
        if states != self.last_states or now - self.last_print >= self.print_every_s:
            self.last_states, self.last_print = states, now
            print(
                format_table(self.name, rows, now - self.started), file=self.stream or sys.stdout, flush=True
            )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        print(f"[sweep {self.name}] {trial.config['spec']['trial']} failed: see its fit.log", file=sys.stderr)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        name = trial.config["spec"]["trial"]
        print(
            f"[sweep {self.name}] {name} died; retrying from its last checkpoint",
            file=self.stream or sys.stdout,
        )
