"""The agent-step progress bar: driven by a fake trainer and clock, in a terminal and into a log."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sgqn.app import progress
from sgqn.app.eval_callback import EvaluationCallback
from sgqn.app.progress import AgentStepProgressBar, Snapshot, format_line, format_number, format_postfix
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

    def __init__(self, clock: Clock, seconds: float, every_env_steps: int) -> None:
        super().__init__(every_env_steps=every_env_steps, modes=["train", "color_hard"])
        self.clock, self.seconds = clock, seconds

    def evaluate(self, trainer: Any, pl_module: Any, step: int | None = None) -> dict[str, float]:
        self.clock.now += self.seconds
        self.history.append({"env_steps": float(trainer.datamodule.stats.env_steps)})
        return {"eval/train/return_mean": 250.0, "eval/color_hard/return_mean": 87.25}


def run(
    bar: AgentStepProgressBar,
    clock: Clock,
    *,
    total: int = 200,
    init_steps: int = 100,
    collect_s: float = 0.001,
    update_s: float | Callable[[int], float] = 0.1,
    eval_every: int = 100,
    eval_s: float = 5.0,
    on_tick: Any = None,
) -> None:
    """What Lightning and `EnvStream` do in `sgqn fit`: hooks, stats and (fake) time."""
    stats = StreamStats()
    datamodule = SimpleNamespace(
        stats=stats, hparams=SimpleNamespace(num_env_steps=total, init_steps=init_steps, updates_per_step=1)
    )
    evaluation = FakeEvaluation(clock, eval_s, eval_every)
    trainer = SimpleNamespace(datamodule=datamodule, callbacks=[bar, evaluation], is_global_zero=True)
    module: Any = None
    bar.setup(trainer, module, "fit")  # type: ignore[arg-type]
    bar.on_fit_start(trainer, module)  # type: ignore[arg-type]

    def batch_end() -> None:
        bar.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
        evaluation.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
        if on_tick is not None:
            on_tick(bar, stats)

    for step in range(1, total + 1):
        clock.now += collect_s
        stats.env_steps = step
        if step % 50 == 0:
            stats.last_episode_return = 143.0
        due = init_steps if step == init_steps else int(step > init_steps)
        for _ in range(due):  # no hook between collected steps: only after each update
            stats.updates += 1
            clock.now += update_s(step) if callable(update_s) else update_s
            batch_end()
    bar.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
    evaluation.on_train_end(trainer, module)  # type: ignore[arg-type]
    bar.teardown(trainer, module, "fit")  # type: ignore[arg-type]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress, "_clock", clock)
    return clock


def test_numbers_and_terminal_postfix() -> None:
    assert [format_number(x) for x in (143.0, 143.27, 41.23, 0.5, 3.0, 1e3)] == [
        "143",
        "143",
        "41.2",
        "0.5",
        "3",
        "1000",
    ]
    snapshot = Snapshot(
        env_steps=1250,
        total=2500,
        updates=1250,
        elapsed=100.0,
        eta=125.4,
        steps_per_s=10.0,
        updates_per_s=9.87,
        last_return=143.0,
    )
    assert format_postfix(snapshot) == "ETA 02:05, 10 steps/s, 9.87 upd/s, return=143"
    unknown = Snapshot(0, 2500, 0, 1.0, None, float("nan"), float("nan"), float("nan"))
    assert format_postfix(unknown) == "ETA ?"
    line = format_line(Snapshot(**{**vars(snapshot), "status": "warm-up updates 12/500"}))
    assert line == (
        "[sgqn] 1250/2500 agent steps (50%) | elapsed 01:40, ETA 02:05 | 10 steps/s, 9.87 updates/s"
        " | 1250 updates | return=143 | warm-up updates 12/500"
    )


def test_log_lines_are_plain_few_and_report_the_warm_up(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    run(AgentStepProgressBar(interactive=False), clock)
    out = capsys.readouterr()
    assert ESCAPE not in out.err + out.out and "\r" not in out.err
    lines = out.err.splitlines()
    assert lines and all(line.startswith("[sgqn] ") for line in lines)
    assert len(lines) <= 30
    assert "start, 200 agent steps: 100 random warm-up steps, 100 warm-up updates" in lines[0]
    burst = [line for line in lines if "warm-up updates" in line]
    assert "100/200 agent steps" in burst[1] and "warm-up updates 1/100" in burst[1]
    assert any("warm-up updates done: 100 in 00:10, 10 updates/s" in line for line in burst), burst
    assert "[sgqn] eval at 100 agent steps (00:05): train=250, color_hard=87.2" in lines
    assert "return=143" in out.err and "143.0" not in out.err and not re.search(r"\d+\.0\b", out.err)
    assert "200/200 agent steps (100%)" in lines[-1] and lines[-1].endswith("| done")


def test_line_interval_is_configurable(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    run(AgentStepProgressBar(print_every_env_steps=50, interactive=False), clock)
    steps = re.findall(r"^\[sgqn\] (\d+)/200 agent steps", capsys.readouterr().err, re.MULTILINE)
    # start, warm-up burst start and end, every 50 steps, done
    assert steps == ["0", "100", "101", "150", "200", "200"]


def test_eta_follows_the_recent_rate(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    """Time per step changes after the warm-up and when training slows down: the ETA follows."""
    seen: dict[tuple[int, int], float | None] = {}

    def record(bar: AgentStepProgressBar, stats: StreamStats) -> None:
        seen[stats.env_steps, stats.updates] = bar._snapshot().eta

    def update_s(step: int) -> float:
        return 0.1 if step < 600 else 0.2  # e.g. a longer episode phase, a busier machine

    run(
        AgentStepProgressBar(interactive=False),
        clock,
        total=1000,
        update_s=update_s,
        eval_every=500,
        eval_s=20.0,
        on_tick=record,
    )
    # Mid-burst (random steps took 0.001 s): the rest of the burst, then 900 steps of a collection and
    # an update each. (From the average rate since the start it would be ~46 s.)
    assert seen[100, 50] == pytest.approx(50 * 0.1 + 900 * (0.001 + 0.1), rel=0.1)
    # After the evaluation at 500 steps (20 s, measured): the steps left, plus the evaluation at 1000.
    assert seen[500, 500] == pytest.approx(500 * 0.101 + 20, rel=0.05)
    # 300 steps after the slowdown the last minute's rate rules (since the start: ~0.13 s per step).
    assert seen[900, 900] == pytest.approx(100 * 0.201 + 20, rel=0.05)


def test_terminal_bar_moves_during_the_warm_up_burst(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    run(AgentStepProgressBar(interactive=True, refresh_s=0.0), clock)
    frames = capsys.readouterr().err.replace("\n", "\r").split("\r")
    burst = [f for f in frames if f.startswith("warm-up updates ") and "100/200 steps" in f]
    counts = {int(re.match(r"warm-up updates (\d+)/100", f)[1]) for f in burst}  # type: ignore[index]
    assert len(counts) > 50 and max(counts) == 100  # the updates count on while agent steps stand still
    assert any(f.startswith("evaluating at 100 agent steps…") for f in frames)
    assert any("200/200 steps" in f and "return=143" in f for f in frames)
    assert "[sgqn] eval at 200 agent steps (00:05): train=250, color_hard=87.2" in frames
    assert "143.0" not in "".join(frames)


def test_cli_replaces_lightnings_bar(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ProgressBar

    from sgqn.app.fit import SGQNCLI
    from sgqn.data.stream import DMCDataModule
    from sgqn.module import SGQNModule

    def bars(*extra: str) -> list[ProgressBar]:
        cli = SGQNCLI(
            SGQNModule,
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
    (bar,) = bars("--trainer.enable_progress_bar", "true", "--progress.print_every_env_steps", "25")
    assert isinstance(bar, AgentStepProgressBar) and bar.print_every_env_steps == 25
