"""The agent-step progress bar, driven by a fake trainer and clock: what a user sees in a terminal and in a log."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sgqn.app import progress
from sgqn.app.eval_callback import EvaluationCallback
from sgqn.app.progress import AgentStepProgressBar
from sgqn.data.settings import UpdateSchedule
from sgqn.data.stream import StreamStats

ESCAPE = "\x1b["
REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEvaluation(EvaluationCallback):
    """Evaluates in `seconds` of fake time, without envs."""

    def __init__(self, clock: Clock, seconds: float, every_agent_steps: int) -> None:
        super().__init__(every_agent_steps=every_agent_steps, modes=["train", "color_hard"])
        self.clock, self.seconds = clock, seconds

    def evaluate(self, trainer: Any, pl_module: Any, step: int | None = None) -> dict[str, float]:
        self.clock.now += self.seconds
        self.history.append({"agent_steps": float(trainer.datamodule.stats.agent_steps)})
        return {"eval/train/return_mean": 250.0, "eval/color_hard/return_mean": 87.25, "eval/seconds": 5.0}


def run(
    bar: AgentStepProgressBar,
    clock: Clock,
    *,
    total: int = 200,
    init_steps: int = 100,
    update_s: float | Callable[[int], float] = 0.1,
    eval_every: int = 100,
    eval_s: float = 5.0,
    on_tick: Callable[[AgentStepProgressBar, StreamStats], None] | None = None,
) -> None:
    """What Lightning (its hooks, in order) and `EnvStream` (stats, fake time) do in `sgqn fit`."""
    stats = StreamStats()
    schedule = UpdateSchedule(
        num_agent_steps=total,
        init_steps=init_steps,
        updates_per_step=1,
        update_every_steps=1,
        warmup_burst=True,
        frames_per_batch=1,
        overlap_collection=False,
        policy_sync_every=1,
    )
    evaluation = FakeEvaluation(clock, eval_s, eval_every)
    datamodule = SimpleNamespace(stats=stats, schedule=schedule)
    trainer: Any = SimpleNamespace(datamodule=datamodule, callbacks=[bar, evaluation], is_global_zero=True)
    callbacks: list[Any] = [bar, evaluation]
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for hook in ("on_fit_start", "on_train_start", "on_train_epoch_start"):
        for callback in callbacks:
            getattr(callback, hook)(trainer, None)
    for step in range(1, total + 1):
        clock.now += 0.001  # one collected agent step
        stats.agent_steps = step
        if step % 50 == 0:
            stats.last_episode_return = 143.0
        due = init_steps if step == init_steps else int(step > init_steps)
        for _ in range(due):  # no hook between collected steps: only after each update
            stats.updates += 1
            clock.now += update_s(step) if callable(update_s) else update_s
            for callback in callbacks:
                callback.on_train_batch_end(trainer, None, None, None, 0)
            if on_tick is not None:
                on_tick(bar, stats)
    for hook in ("on_train_epoch_end", "on_train_end"):
        for callback in callbacks:
            getattr(callback, hook)(trainer, None)
    bar.teardown(trainer, None, "fit")  # type: ignore[arg-type]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress, "_clock", clock)
    return clock


def frames(err: str) -> list[str]:
    """What a terminal showed, one redraw (or line above the bar) at a time."""
    return [f.rstrip() for f in re.split(r"[\r\n]", err) if f.strip()]


def test_log_lines_are_plain_and_say_what_runs(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    run(AgentStepProgressBar(interactive=False), clock)
    out = capsys.readouterr()
    assert ESCAPE not in out.err and "\r" not in out.err and out.out == ""
    lines = out.err.splitlines()
    assert all(line.startswith("[sgqn] ") for line in lines) and len(lines) <= 20
    assert lines[0] == "[sgqn] 0/200 agent steps (0%) | elapsed 00:00, ETA ? | ? agent steps/s | start"
    burst = [line for line in lines if "warm-up updates" in line]
    assert len(burst) == 2, burst
    assert burst[0].startswith("[sgqn] 100/200 agent steps") and burst[0].endswith("| warm-up updates 1/100")
    assert burst[1].startswith("[sgqn] 101/200 agent steps") and burst[1].endswith("| warm-up updates done")
    assert "[sgqn] eval at 100 agent steps (00:05): train=250, color_hard=87.2" in lines
    # elapsed, ETA and rates from the recent (training) rate, the last return
    line = "[sgqn] 150/200 agent steps (75%) | elapsed 00:20, ETA 00:05 |  9.90 agent steps/s, 9.9 updates/s"
    assert f"{line}, return=143" in lines
    assert lines[-1].startswith("[sgqn] 200/200 agent steps (100%)") and lines[-1].endswith("| done")


@pytest.mark.parametrize(("term", "bar"), [("xterm-256color", True), ("dumb", False)])
def test_a_bar_only_on_a_terminal_that_draws_one(
    term: str, bar: bool, clock: Clock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", term)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run(AgentStepProgressBar(), clock)
    err = capsys.readouterr().err
    assert ("\r" in err) == bar and ("[sgqn] 150/200 agent steps" in err) != bar


@pytest.mark.parametrize(
    ("every", "total", "steps"),
    [
        (50, 200, [0, 100, 101, 150, 200, 200]),  # start, warm-up burst start and end, every 50, done
        (0, 1000, [0, 100, 101, *range(150, 1001, 50), 1000]),  # 0: every 5% of the run
    ],
)
def test_line_interval(
    every: int, total: int, steps: list[int], clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    run(AgentStepProgressBar(print_every_agent_steps=every, interactive=False), clock, total=total)
    printed = re.findall(rf"^\[sgqn\] (\d+)/{total} agent steps", capsys.readouterr().err, re.MULTILINE)
    assert printed == [str(s) for s in steps]


def test_terminal_bar_counts_agent_steps_and_says_what_runs(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    run(AgentStepProgressBar(interactive=True), clock)
    shown = frames(capsys.readouterr().err)
    assert any(f.startswith("collecting 100 random warm-up steps:   0%|") and "0/200" in f for f in shown)
    burst = [f for f in shown if f.startswith("warm-up updates ") and "| 100/200 [" in f]
    counts = [int(re.match(r"warm-up updates (\d+)/100", f)[1]) for f in burst]  # type: ignore[index]
    assert len(set(counts)) > 10 and counts == sorted(counts)  # on while the agent steps stand still
    assert any(f.startswith("evaluating at 100 agent steps…:  50%|") for f in shown)
    assert "[sgqn] eval at 200 agent steps (00:05): train=250, color_hard=87.2" in shown  # above the bar
    middle = "| 150/200 [00:20<00:05,  9.90 agent steps/s, 9.9 updates/s, return=143]"
    assert any(f.startswith(" 75%|") and f.endswith(middle) for f in shown)  # elapsed, ETA, rates, return
    assert shown[-1].endswith("| 200/200 [00:30<00:00,  6.62 agent steps/s, 9.9 updates/s, return=143]")
    assert not any("Epoch" in f or "it/s" in f for f in shown)  # Lightning's batch-counting bar


def test_eta_follows_the_recent_training_rate(clock: Clock) -> None:
    """Time per step changes after the warm-up and when training slows down: the rate (hence the ETA)
    follows, and leaves the time of the warm-up burst and of evaluations out."""
    rates: dict[tuple[int, int], float | None] = {}

    def record(bar: AgentStepProgressBar, stats: StreamStats) -> None:
        rates[stats.agent_steps, stats.updates] = bar.train_progress_bar.format_dict["rate"]

    def update_s(step: int) -> float:
        return 0.1 if step < 600 else 0.2  # e.g. a longer episode phase, a busier machine

    run(
        AgentStepProgressBar(interactive=False),
        clock,
        total=1000,
        update_s=update_s,
        eval_s=20.0,
        on_tick=record,
    )
    assert rates[100, 50] is None  # in the burst: no training rate yet, the ETA says "?"
    assert 1 / rates[150, 150] == pytest.approx(0.101, rel=0.05)  # type: ignore[operator]
    assert 1 / rates[510, 510] == pytest.approx(0.101, rel=0.05)  # 20 s evaluations every 100 steps
    assert 1 / rates[900, 900] == pytest.approx(0.201, rel=0.05)  # type: ignore[operator]


def test_lightnings_messages_go_above_the_bar(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    logger, handler = logging.getLogger("lightning.pytorch"), logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)

    def say(bar: AgentStepProgressBar, stats: StreamStats) -> None:
        if stats.updates == 150:
            logger.warning("a message from Lightning")

    try:
        run(AgentStepProgressBar(interactive=True), clock, on_tick=say)
    finally:
        logger.removeHandler(handler)
    before = re.findall(r"(.)a message from Lightning\n", capsys.readouterr().err, re.DOTALL)
    assert before and set(before) == {"\r"}  # on a line of its own: tqdm cleared the bar first


def test_cli_replaces_lightnings_bar(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ProgressBar

    from sgqn.app.fit import SGQNCLI
    from sgqn.data.datamodule import DMCDataModule
    from sgqn.training.module import AgentModule

    def bars(*extra: str) -> list[ProgressBar]:
        cli = SGQNCLI(
            AgentModule,
            DMCDataModule,
            run=False,
            args=[
                *("-c", str(REPO / "conf" / "tiny.yaml")),
                *("--trainer.default_root_dir", str(tmp_path)),
                *("--trainer.logger.init_args.tracking_uri", f"sqlite:///{tmp_path}/mlflow.db"),
                *extra,
            ],
            parser_kwargs={"parser_mode": "omegaconf", "default_env": False},
            save_config_callback=None,
        )
        return [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)]

    assert bars() == []  # tiny.yaml: enable_progress_bar false
    (bar,) = bars("--trainer.enable_progress_bar", "true", "--progress.print_every_agent_steps", "25")
    assert isinstance(bar, AgentStepProgressBar) and bar.print_every_agent_steps == 25
