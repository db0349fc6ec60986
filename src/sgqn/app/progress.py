"""`sgqn fit`'s progress in agent steps. Lightning's `TQDMProgressBar` and tqdm draw the bar and measure the
elapsed time, the smoothed rate and the time left; ours is the bookkeeping: agent steps, updates/s, what runs
while the steps stand still, and plain ``[sgqn]`` lines when stderr is no terminal or ``TERM=dumb``."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from tqdm.std import EMA

from sgqn.app.eval_callback import EvaluationCallback
from sgqn.app.schedule import Cadence
from sgqn.data.settings import UpdateSchedule
from sgqn.data.stream import updates_due

PREFIX, REFRESH_S = "[sgqn]", 0.5  # redraw at most every REFRESH_S seconds
LINE = "{n_fmt}/{total_fmt} agent steps ({percentage:.0f}%) | elapsed {elapsed}, ETA {remaining} | "
_clock = time.perf_counter  # a module attribute, so that tests can drive time


def format_duration(seconds: float) -> str:
    return Tqdm.format_interval(max(0.0, seconds))


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"  # 143, 87.2, 3, 0.5


class AgentStepProgressBar(TQDMProgressBar):
    """Progress of `sgqn fit` in agent steps, read from the data module's `StreamStats`: a bar in a terminal
    (`interactive`: None detects), else a line every `print_every_agent_steps` agent steps (0: every 5%)."""

    def __init__(self, print_every_agent_steps: int = 0, interactive: bool | None = None) -> None:
        super().__init__(leave=True)
        self.print_every_agent_steps, self.interactive = print_every_agent_steps, interactive
        self._phase: str | None = None  # None outside `fit`; then start, collect, burst, train
        self._exit = contextlib.ExitStack()

    # Lightning's bar counts batches in these hooks; ours is up from `on_fit_start` to `teardown`.
    on_train_start = on_train_epoch_start = on_train_epoch_end = on_train_end = Callback.on_train_start

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_disabled:  # not on the global rank 0
            return
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        schedule: UpdateSchedule = dm.schedule
        self._stats, self._total, self._init = dm.stats, schedule.num_agent_steps, schedule.init_steps
        self._initial, self._phase = self._stats.agent_steps, "start"
        burst = updates_due(self._init, self._init, schedule.updates_per_step, burst=schedule.warmup_burst)
        self._burst = burst if self._initial <= self._init else 0  # none if resumed past it
        self._lines = Cadence(self.print_every_agent_steps or max(1, round(self._total / 20)))
        self._updates_per_s, self._drawn = EMA(0.3), [_clock(), self._stats.updates]
        self._evaluations = [c for c in trainer.callbacks if isinstance(c, EvaluationCallback)]  # type: ignore[attr-defined]
        for callback in self._evaluations:
            self._watch(callback)
        tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self._tty = tty if self.interactive is None else self.interactive
        loggers = [logging.root, logging.getLogger("lightning.pytorch")] if self._tty else []
        self._exit.enter_context(logging_redirect_tqdm(loggers))  # their messages above the bar
        out = sys.stderr if self._tty else self._exit.enter_context(open(os.devnull, "w"))  # noqa: SIM115
        options = {"unit": " agent steps", "dynamic_ncols": True, "smoothing": 0.05}
        self.train_progress_bar = bar = Tqdm(total=self._total, initial=self._initial, file=out, **options)
        bar.bar_format, bar._time, bar.start_t = self.BAR_FORMAT, _clock, _clock()  # as tqdm's tests do
        screen = bar.dynamic_ncols  # the terminal's (columns, rows) less 1: a bare pty's 0 x 0 hides the bar
        bar.dynamic_ncols, bar.nrows = lambda file: [n if n and n > 0 else None for n in screen(file)], None
        self._tick(force=True, note="start")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit", note=f"stopped: {type(exception).__name__}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str, note: str = "done") -> None:
        if self._phase is None:
            return
        self._tick(force=True, note=note)  # after a final evaluation
        self._phase = None  # a later `fit` starts afresh
        self.train_progress_bar.initial = self._initial  # tqdm's last frame: the average rate since then
        self.train_progress_bar.close()
        self._exit.close()
        for callback in self._evaluations:
            delattr(callback, "evaluate")

    def on_train_batch_end(self, *_: Any, force: bool = False, note: str = "") -> None:
        """Redraws, at most every REFRESH_S seconds unless forced; without a terminal, writes the lines due."""
        if self._phase is None:
            return
        stats, bar, now, previous = self._stats, self.train_progress_bar, _clock(), self._phase
        burst = self._burst and stats.agent_steps == self._init and stats.updates <= self._burst
        self._phase = "collect" if stats.agent_steps < self._init else "burst" if burst else "train"
        note = note or ("warm-up updates done" if previous == "burst" != self._phase else "")
        line = self._lines.due(stats.agent_steps) or note or self._phase == "burst" != previous
        if not (force or line or self._phase != previous or now - self._drawn[0] >= REFRESH_S):
            return
        if now > self._drawn[0] and stats.updates > self._drawn[1]:  # recent updates, while any run
            self._updates_per_s((stats.updates - self._drawn[1]) / (now - self._drawn[0]))
        self._drawn, ups, ret = [now, stats.updates], self._updates_per_s(), stats.last_episode_return
        postfix = [f"{_number(ups)} updates/s"] if ups else []
        postfix += [f"return={_number(ret)}"] if math.isfinite(ret) else []
        bar.set_postfix_str(", ".join(postfix), refresh=False)
        collecting = f"collecting {self._init - stats.agent_steps} random warm-up steps"
        status = {"collect": collecting, "burst": f"warm-up updates {stats.updates}/{self._burst}"}
        bar.set_description_str(status.get(self._phase, ""), refresh=False)
        if previous != self._phase or self._phase != "train":  # tqdm's rate (the ETA) times training only
            bar.initial, bar.last_print_n, bar.last_print_t = stats.agent_steps, stats.agent_steps, now
        bar.update(stats.agent_steps - bar.n) or bar.refresh()
        if line and not self._tty:
            meter = Tqdm.format_meter(**bar.format_dict | {"bar_format": LINE + "{rate_noinv_fmt}{postfix}"})
            Tqdm.write(" | ".join(p for p in (f"{PREFIX} {meter}", note or bar.desc) if p), file=sys.stderr)

    _tick = on_train_batch_end  # also forced: at the start, after an evaluation, at the end

    def _watch(self, callback: EvaluationCallback) -> None:
        """Wrap the callback's `evaluate`: the bar says "evaluating…" and keeps that time out of the rate."""
        original = callback.evaluate

        def evaluate(trainer: Trainer, module: LightningModule, step: int | None = None) -> dict[str, float]:
            start, at = _clock(), self._stats.agent_steps if step is None else step
            self.train_progress_bar.set_description_str(f"evaluating at {at} agent steps…")
            metrics = original(trainer, module, step=step)
            self.train_progress_bar.last_print_t += (seconds := _clock() - start)
            self._drawn[0] += seconds  # the rates time training only
            modes = {k.split("/")[1]: v for k, v in metrics.items() if k.endswith("/return_mean")}
            returns = ", ".join(f"{mode}={_number(value)}" for mode, value in modes.items())
            line = f"{PREFIX} eval at {at} agent steps ({format_duration(seconds)}): {returns}"
            Tqdm.write(line, file=sys.stderr)  # above the bar, if any
            self._tick(force=True)
            return metrics

        setattr(callback, "evaluate", evaluate)  # noqa: B010 (mypy refuses assigning to a method)


def with_progress_bar(trainer_config: Mapping[str, Any], print_every_agent_steps: int = 0) -> list[Callback]:
    """The trainer config's callbacks with the agent-step bar in front, unless the bar is switched off
    (Lightning refuses a bar callback then) or one is configured already."""
    configured = trainer_config.get("callbacks") or []
    callbacks: list[Callback] = list(configured) if isinstance(configured, list) else [configured]
    off = trainer_config.get("enable_progress_bar") is False or trainer_config.get("barebones")
    if off or any(isinstance(c, ProgressBar) for c in callbacks):
        return callbacks
    return [AgentStepProgressBar(print_every_agent_steps), *callbacks]
