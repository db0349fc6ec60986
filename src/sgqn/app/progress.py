"""`sgqn fit`'s one progress bar, in agent steps (replaces Lightning's bar, which counts batches).

In a terminal: a tqdm bar over `data.num_agent_steps` with elapsed time, ETA, env steps/s, updates/s and
the last episode return; its description says what is happening when agent steps do not advance (the
random warm-up, the burst of `init_steps` updates at the switch, an evaluation). Otherwise (output
redirected to a file, or ``TERM=dumb``): a plain line every `print_every_agent_steps` agent steps, at the
start and end of the warm-up burst and around each evaluation, without any terminal escape codes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any, TextIO

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sgqn.app.eval_callback import EvaluationCallback
from sgqn.app.schedule import Cadence
from sgqn.data.stream import updates_due

PREFIX = "[sgqn]"
_clock = time.perf_counter  # a module attribute, so that tests can drive time


def format_number(value: float) -> str:
    """Whole numbers and anything ≥ 100 without decimals (``143``, not ``143.0``), else 3 digits."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def format_duration(seconds: float) -> str:
    return tqdm.format_interval(max(0.0, seconds))


@dataclass(frozen=True)
class Snapshot:
    """What one frame of the bar (or one log line) shows."""

    agent_steps: int
    total: int
    updates: int
    elapsed: float
    eta: float | None  # None: not yet measurable (no update timed yet)
    steps_per_s: float  # recent rates; nan when unknown
    updates_per_s: float
    last_return: float  # nan before the first episode ends
    status: str = ""  # what runs while agent steps stand still, e.g. "warm-up updates 12/500"


def format_postfix(s: Snapshot) -> str:
    """The terminal bar's text after ``[elapsed``: ETA, rates, last return."""
    parts = ["ETA " + (format_duration(s.eta) if s.eta is not None else "?")]
    if math.isfinite(s.steps_per_s) and s.steps_per_s > 0:
        parts.append(f"{format_number(s.steps_per_s)} steps/s")
    if math.isfinite(s.updates_per_s) and s.updates_per_s > 0:
        parts.append(f"{format_number(s.updates_per_s)} upd/s")
    if math.isfinite(s.last_return):
        parts.append(f"return={format_number(s.last_return)}")
    return ", ".join(parts)


def format_line(s: Snapshot) -> str:
    """One plain log line (no escape codes)."""
    percent = 100 * s.agent_steps / s.total if s.total else 100.0
    parts = [
        f"{PREFIX} {s.agent_steps}/{s.total} agent steps ({percent:.0f}%)",
        f"elapsed {format_duration(s.elapsed)}, ETA "
        + (format_duration(s.eta) if s.eta is not None else "?"),
    ]
    rates = []
    if math.isfinite(s.steps_per_s):
        rates.append(f"{format_number(s.steps_per_s)} steps/s")
    if math.isfinite(s.updates_per_s):
        rates.append(f"{format_number(s.updates_per_s)} updates/s")
    if rates:
        parts.append(", ".join(rates))
    parts.append(f"{s.updates} updates")
    if math.isfinite(s.last_return):
        parts.append(f"return={format_number(s.last_return)}")
    if s.status:
        parts.append(s.status)
    return " | ".join(parts)


def is_interactive(stream: TextIO) -> bool:
    """Redraw a bar only on a real terminal (not a file, a pipe, or ``TERM=dumb``)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


def _size(stream: TextIO) -> dict[str, Any]:
    """Follow the terminal's size; one that reports 0 columns or rows (a bare pty) would hide the bar."""
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        columns, lines = 0, 0
    return {"dynamic_ncols": True} if columns > 0 and lines > 0 else {"ncols": 120, "nrows": 24}


class AgentStepProgressBar(ProgressBar):
    """Progress of `sgqn fit` in agent steps, read from the data module's `StreamStats`.

    Args:
        print_every_agent_steps: without a terminal, a line every this many agent steps (0: every 5% of
            the run).
        refresh_s: terminal redraws at most this often.
        heartbeat_s: without a terminal, also a line after this long without one.
        window_s: rates and the ETA use the last this many seconds (time per step changes after the
            warm-up, so the average since the start would mislead).
        interactive: force the terminal bar (True) or plain lines (False); None: detect.
    """

    def __init__(
        self,
        print_every_agent_steps: int = 0,
        refresh_s: float = 0.5,
        heartbeat_s: float = 300.0,
        window_s: float = 60.0,
        interactive: bool | None = None,
    ) -> None:
        super().__init__()
        self.print_every_agent_steps, self.refresh_s = print_every_agent_steps, refresh_s
        self.heartbeat_s, self.window_s, self.interactive = heartbeat_s, window_s, interactive
        self._enabled = True
        self._started = self._closed = False
        self._bar: tqdm | None = None
        self._redirect = ExitStack()
        self._unwrap: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ Lightning's ProgressBar API

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.write(kwargs.get("sep", " ").join(map(str, args)), file=self._stream)
        else:
            print(*args, file=self._stream, flush=True, **kwargs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":  # before any hook, so that an evaluation at the start is seen too
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, EvaluationCallback):
                    self._watch(callback)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning then collects the random warm-up steps (its first batch) without calling any hook,
        # even `on_train_start`: say so first.
        self._start(trainer)
        self._tick(force=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._start(trainer)
        self._tick()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The one epoch ends with the run: close before Lightning logs that fit stopped (it would land
        # on the bar's line); a final evaluation in `on_train_end` is reported in plain lines.
        if self._started and self._stats.agent_steps >= self._total:
            self._close("done")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._finish(note=f"stopped: {type(exception).__name__}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish(note="done")

    def _finish(self, note: str) -> None:
        self._close(note)
        self._started = self._closed = False  # a later `fit` starts afresh
        for undo in self._unwrap:
            undo()
        self._unwrap.clear()

    # ------------------------------------------------------------------ state

    @property
    def _stream(self) -> TextIO:
        return sys.stderr  # looked up late: tests and tools swap it

    def _start(self, trainer: Trainer) -> None:
        if self._started:
            return
        self._started = True
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        self._stats, hp = dm.stats, dm.hparams
        self._total, self._init_steps = int(hp.num_agent_steps), int(hp.init_steps)
        # updates per agent step once learning runs (DrQ-v2: one every `update_every_steps`)
        self._updates_per_step = hp.updates_per_step / getattr(hp, "update_every_steps", 1)
        # The burst only happens if the run has not passed the switch yet (a resume may have).
        burst = updates_due(
            self._init_steps,
            self._init_steps,
            int(hp.updates_per_step),
            burst=getattr(hp, "warmup_burst", True),
        )
        self._burst = burst if self._init_steps > 0 and self._stats.agent_steps <= self._init_steps else 0
        self._evaluations = [c for c in trainer.callbacks if isinstance(c, EvaluationCallback)]  # type: ignore[attr-defined]
        # The plain-line cadence is display only: re-derived from the clock, never checkpointed.
        self._lines = Cadence(self.print_every_agent_steps or max(1, round(self._total / 20)))
        self._lines.due(self._stats.agent_steps)
        self._t0 = self._last_draw = self._last_line = _clock()
        self._eval_seconds: list[float] = []
        self._eval_start: float | None = None
        self._eval_step = 0
        self._paused = 0.0  # seconds spent evaluating: kept out of the rates
        self._phase = ""
        self._status = ""
        self._window: deque[tuple[float, int, int]] = deque()
        self._collect_s: float | None = None  # seconds per random warm-up step
        self._update_s: float | None = None  # seconds per update, from the burst
        self._start_steps, self._burst_t0, self._burst_u0 = self._stats.agent_steps, 0.0, 0
        interactive = is_interactive(self._stream) if self.interactive is None else self.interactive
        if not self._enabled:
            return
        if interactive:
            # Lightning's messages (model summary, warnings) go above the bar instead of through it.
            self._redirect = ExitStack()
            self._redirect.enter_context(
                logging_redirect_tqdm([logging.root, logging.getLogger("lightning.pytorch")])
            )
            self._bar = tqdm(
                total=self._total,
                initial=self._stats.agent_steps,
                file=self._stream,
                **_size(self._stream),
                leave=True,
                bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]",
            )
        if self._bar is None:
            plan = f"{self._total} agent steps"
            if self._burst:
                plan += (
                    f": {self._init_steps} random warm-up steps, {self._burst} warm-up updates, then training"
                )
            self._write(format_line(self._snapshot(status=f"start, {plan}")))

    def _busy(self, now: float) -> float:
        return now - self._t0 - self._paused

    def _phase_of(self) -> str:
        steps, updates = self._stats.agent_steps, self._stats.updates
        if steps < self._init_steps:
            return "collect"
        if self._burst and steps == self._init_steps and updates <= self._burst:
            return "burst"
        return "train"

    def _rates(self) -> tuple[float, float, float]:
        """Span (s), steps/s and updates/s over the window."""
        if len(self._window) < 2:
            return 0.0, math.nan, math.nan
        (t0, s0, u0), (t1, s1, u1) = self._window[0], self._window[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, math.nan, math.nan
        return span, (s1 - s0) / span, (u1 - u0) / span

    def _eta(self, phase: str, span: float, steps_per_s: float, updates_per_s: float) -> float | None:
        remaining = self._total - self._stats.agent_steps
        if remaining <= 0 or phase == "done":
            return 0.0
        if phase == "train" and span >= 2 and steps_per_s > 0:
            eta = remaining / steps_per_s
        elif self._update_s is not None:  # in the burst, or just after it: the measured costs
            left_in_burst = max(0, self._burst - self._stats.updates) if phase == "burst" else 0
            per_step = (self._collect_s or 0.0) + self._updates_per_step * self._update_s
            eta = left_in_burst * self._update_s + remaining * per_step
        else:
            return None
        if self._eval_seconds:  # evaluations still to come, at their measured cost
            mean = sum(self._eval_seconds) / len(self._eval_seconds)
            eta += mean * sum(self._evaluations_left(c) for c in self._evaluations)
        return eta

    def _evaluations_left(self, callback: EvaluationCallback) -> int:
        steps, every = self._stats.agent_steps, callback.every_agent_steps
        periodic = self._total // every - steps // every if every > 0 else 0
        final = callback.at_end and (every <= 0 or self._total % every != 0)
        return periodic + int(final)

    def _snapshot(self, status: str | None = None) -> Snapshot:
        now = _clock()
        span, steps_per_s, updates_per_s = self._rates()
        phase = self._phase or self._phase_of()
        stats = self._stats
        return Snapshot(
            agent_steps=stats.agent_steps,
            total=self._total,
            updates=stats.updates,
            elapsed=now - self._t0,
            eta=self._eta(phase, span, steps_per_s, updates_per_s),
            steps_per_s=steps_per_s,
            updates_per_s=updates_per_s,
            last_return=stats.last_episode_return,
            status=self._status if status is None else status,
        )

    # ------------------------------------------------------------------ drawing

    def _status_of(self, phase: str) -> str:
        """What runs while agent steps stand still."""
        stats = self._stats
        if self._eval_start is not None:
            return f"evaluating at {self._eval_step} agent steps…"
        if phase == "burst":
            return f"warm-up updates {stats.updates}/{self._burst}"
        if phase == "collect":
            return f"collecting {self._init_steps - stats.agent_steps} random warm-up steps"
        return ""

    def _tick(self, force: bool = False) -> None:
        if self._closed:
            return
        now = _clock()
        stats, phase = self._stats, self._phase_of()
        note = self._enter(phase, now) if phase != self._phase else ""
        self._status = self._status_of(phase)
        due_line = self._lines.due(stats.agent_steps) or now - self._last_line >= self.heartbeat_s
        if not (force or note or due_line or now - self._last_draw >= self.refresh_s):
            return
        busy = self._busy(now)
        self._window.append((busy, stats.agent_steps, stats.updates))
        while len(self._window) > 2 and busy - self._window[0][0] > self.window_s:
            self._window.popleft()
        if phase == "burst":
            _, _, updates_per_s = self._rates()
            if updates_per_s > 0:
                self._update_s = 1 / updates_per_s
        self._last_draw = now
        snapshot = self._snapshot()
        self._draw(snapshot)
        if note:
            self._note(snapshot, note)
        elif due_line and self._bar is None:
            self._write(format_line(snapshot))

    def _enter(self, phase: str, now: float) -> str:
        """Switch phase (rates differ by phase: a new window); returns the log note for the switch."""
        previous, self._phase = self._phase, phase
        self._window.clear()
        busy, stats = self._busy(now), self._stats
        if stats.agent_steps > self._start_steps and self._collect_s is None and previous in ("", "collect"):
            self._collect_s = busy / (stats.agent_steps - self._start_steps)
        if phase == "burst":
            self._burst_t0, self._burst_u0 = busy, stats.updates
            return f"warm-up updates {stats.updates}/{self._burst} (all at agent step {self._init_steps})"
        if previous == "burst":
            # Timed from the first update seen: the ones before it are extrapolated.
            seconds, updates = busy - self._burst_t0, stats.updates - self._burst_u0
            if seconds <= 0 or updates <= 0:
                return f"warm-up updates done: {self._burst}"
            rate = updates / seconds
            took = format_duration(self._burst / rate)
            return f"warm-up updates done: {self._burst} in {took}, {format_number(rate)} updates/s"
        return ""

    def _draw(self, snapshot: Snapshot) -> None:
        if self._bar is None or not self._enabled:
            return
        self._bar.n = snapshot.agent_steps
        self._bar.set_description_str(f"{snapshot.status}: " if snapshot.status else "", refresh=False)
        self._bar.set_postfix_str(format_postfix(snapshot), refresh=False)
        self._bar.refresh()

    def _write(self, text: str) -> None:
        self._last_line = _clock()
        if not self._enabled:
            return
        if self._bar is None:
            print(text, file=self._stream, flush=True)
        else:
            self._bar.write(text, file=self._stream)  # above the bar, which is redrawn below

    def _note(self, snapshot: Snapshot, note: str) -> None:
        """An event: a full line in a log, a short one above the bar in a terminal."""
        if self._bar is None:
            self._write(format_line(replace(snapshot, status=note)))
        else:
            self._write(f"{PREFIX} {note}")

    def _close(self, note: str) -> None:
        if not self._started or self._closed:
            return
        self._closed, self._phase = True, "done"
        snapshot = self._snapshot(status=note)
        self._draw(snapshot)
        if self._bar is None:
            self._write(format_line(snapshot))
        else:
            self._bar.close()
            self._bar = None
            self._redirect.close()

    # ------------------------------------------------------------------ evaluation

    def _watch(self, callback: EvaluationCallback) -> None:
        """Wrap the callback's `evaluate`: the bar says "evaluating…" and keeps that time out of the rates."""
        original = callback.evaluate

        @functools.wraps(original)
        def evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
            self._start(args[0] if args else kwargs["trainer"])
            step = kwargs.get("step", args[2] if len(args) > 2 else None)  # the step it is logged at
            self._eval_begin(self._stats.agent_steps if step is None else int(step))
            metrics: dict[str, float] = {}
            try:
                metrics = original(*args, **kwargs)
            finally:
                self._eval_end(metrics)
            return metrics

        setattr(callback, "evaluate", evaluate)  # noqa: B010 (mypy refuses assigning to a method)
        self._unwrap.append(lambda: delattr(callback, "evaluate"))

    def _eval_begin(self, step: int) -> None:
        self._eval_start, self._eval_step = _clock(), step
        self._tick(force=True)
        if self._bar is None:
            self._write(f"{PREFIX} evaluating at {step} agent steps…")

    def _eval_end(self, metrics: Mapping[str, float]) -> None:
        if self._eval_start is None:
            return
        seconds = _clock() - self._eval_start
        self._eval_start = None
        self._paused += seconds
        self._eval_seconds.append(seconds)
        returns = ", ".join(
            f"{key.split('/')[1]}={format_number(value)}"
            for key, value in metrics.items()
            if key.startswith("eval/") and key.endswith("/return_mean")
        )
        self._write(f"{PREFIX} eval at {self._eval_step} agent steps ({format_duration(seconds)}): {returns}")
        self._tick(force=True)


def with_progress_bar(trainer_config: Mapping[str, Any], print_every_agent_steps: int = 0) -> list[Callback]:
    """The trainer config's callbacks with the agent-step bar in front, unless the bar is switched off
    (Lightning refuses a bar callback then) or one is configured already."""
    configured = trainer_config.get("callbacks") or []
    callbacks: list[Callback] = list(configured) if isinstance(configured, list) else [configured]
    off = trainer_config.get("enable_progress_bar") is False or trainer_config.get("barebones")
    if off or any(isinstance(c, ProgressBar) for c in callbacks):
        return callbacks
    return [AgentStepProgressBar(print_every_agent_steps), *callbacks]


__all__ = [
    "AgentStepProgressBar",
    "Snapshot",
    "format_line",
    "format_number",
    "format_postfix",
    "is_interactive",
    "with_progress_bar",
]
