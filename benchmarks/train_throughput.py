"""End-to-end training throughput of `sgqn fit`: agent steps/s with the env, the updates and the
evaluations all counted, and its projection to a full run.

    python benchmarks/train_throughput.py -c conf/quickstart.yaml --steps 1500
    python benchmarks/train_throughput.py --steps 3000 --trainer.accelerator gpu   # paper settings (defaults)
    python benchmarks/train_throughput.py -c conf/drqv2.yaml --steps 4000 --data.task walker_walk

Runs a real `sgqn fit` (any config and override; MLflow into a temporary store, or none with `--no-mlflow`) for `--steps` agent steps
and times its phases from inside the trainer: the random warm-up (env only), the learning phase (env +
updates, evaluations excluded) and each evaluation. The projection to `--project` agent steps (500k, the
paper's run) is warm-up + learning at the measured rate + one evaluation per `eval.every_agent_steps`, each
as long as the measured ones — start-up (imports, env and network construction) is reported apart, and
so is the one-time start of the evaluation's worker processes (`--eval.workers`), counted once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

PROBE: dict[str, Any] = {}


def _eval_history(trainer: Trainer) -> tuple[list[dict[str, float]], int]:
    """The evaluation callback's history so far and its cadence (agent steps)."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        history = getattr(callback, "history", None)
        if isinstance(history, list) and history and "agent_steps" in history[-1]:
            return history, int(getattr(callback, "every_agent_steps", 0))
    return [], 0


def _curve(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The learning curve: each mode's mean return per evaluation."""
    keep = lambda k: k == "agent_steps" or k.endswith("return_mean")  # noqa: E731
    return [{k: round(float(v), 1) for k, v in h.items() if keep(k)} for h in history]


class ThroughputProbe(Callback):
    """Wall-clock marks of the run's phases (added to the trainer by this script). With `--json`, the
    curve so far is written after each evaluation, so a run stopped early still leaves it."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        PROBE["train_start"] = time.perf_counter()
        PROBE["init_steps"] = int(trainer.datamodule.hparams.init_steps)  # type: ignore[attr-defined]

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        stats = trainer.datamodule.stats  # type: ignore[attr-defined]
        now = time.perf_counter()
        history, _ = _eval_history(trainer)
        # Evaluations are counted at each mark, so exactly those run between the marks are taken out
        # of the learning phase (not the final one, which runs after the last batch).
        if "learn_start" not in PROBE and stats.agent_steps > PROBE["init_steps"]:
            PROBE["learn_start"], PROBE["learn_start_steps"] = now, stats.agent_steps
            PROBE["burst_updates"], PROBE["evals_before_learning"] = stats.updates, len(history)
        PROBE["end"], PROBE["steps"], PROBE["updates"] = now, stats.agent_steps, stats.updates
        PROBE["evals_before_end"] = len(history)
        if PROBE.get("json") and len(history) != PROBE.get("evals_written", 0):
            PROBE["evals_written"] = len(history)
            partial = {
                "status": f"partial: stopped before its end, at {stats.agent_steps} agent steps or later"
            }
            PROBE["json"].write_text(json.dumps({**partial, "eval_returns": _curve(history)}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-c", "--config", action="append", default=[], help="`sgqn fit -c` file(s)")
    parser.add_argument("--steps", type=int, default=2000, help="agent steps to run")
    parser.add_argument("--project", type=int, default=500_000, help="agent steps of the projected run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-mlflow", action="store_true", help="no logger (a machine without MLflow)")
    args, overrides = parser.parse_known_args()

    from sgqn.app.fit import cli_main

    PROBE["json"] = args.json

    work = Path(tempfile.mkdtemp(prefix="sgqn-throughput-"))
    argv = ["fit", *(w for c in args.config for w in ("-c", c)), *overrides]
    argv += ["--data.num_agent_steps", str(args.steps), "--trainer.default_root_dir", str(work / "outputs")]
    if args.no_mlflow:
        argv += ["--trainer.logger", "false"]
    else:
        argv += ["--trainer.logger.init_args.tracking_uri", f"sqlite:///{work}/mlflow.db"]
    argv += ["--trainer.callbacks+=__main__.ThroughputProbe", "--trainer.enable_progress_bar", "false"]
    started = time.perf_counter()
    cli = cli_main(argv)
    total = time.perf_counter() - started
    device = str(cli.model.device)
    # Read after the fit: the final evaluation runs in the evaluation callback's `on_train_end`.
    history, every = _eval_history(cli.trainer)
    parts = ("eval/seconds", "eval/saliency_seconds", "eval/video_seconds")  # episodes, grid, videos
    evals = [(int(h["agent_steps"]), sum(float(h.get(k, 0.0)) for k in parts)) for h in history]
    # `--eval.workers`: the worker processes start once, before the first evaluation's clock.
    starts = [float(h.get("eval/workers_startup_seconds", 0.0)) for h in history]

    eval_s = [s for _, s in evals]
    learning = slice(PROBE.get("evals_before_learning", 0), PROBE.get("evals_before_end", 0))
    learn_evals = sum(s for _, s in evals[learning]) + sum(starts[learning])
    warm_s = PROBE.get("learn_start", PROBE["end"]) - PROBE["train_start"]
    learn_steps = PROBE["steps"] - PROBE.get("learn_start_steps", PROBE["steps"])
    learn_s = PROBE["end"] - PROBE.get("learn_start", PROBE["end"]) - learn_evals
    rate = learn_steps / learn_s if learn_s > 0 else float("nan")
    per_eval = sum(eval_s) / len(eval_s) if eval_s else 0.0
    n_evals = (args.project // every if every else 0) + 1
    warm_s -= sum(starts[: PROBE.get("evals_before_learning", 0)])  # counted once, below
    projected = warm_s + (args.project - PROBE["init_steps"]) / rate + n_evals * per_eval + sum(starts)
    figures = {
        "device": device,
        "threads": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())),
        "agent_steps": PROBE["steps"],
        "updates": PROBE["updates"],
        "startup_s": round(PROBE["train_start"] - started, 1),
        "warmup_s (random steps + burst of updates)": round(warm_s, 1),
        "learning_steps_per_s (env + updates, no evaluation)": round(rate, 2),
        "seconds_per_evaluation": round(per_eval, 1),
        "eval_workers_startup_s": round(sum(starts), 1),
        "end_to_end_steps_per_s (evaluations amortised)": round(
            PROBE["steps"] / (PROBE["end"] - PROBE["train_start"]), 2
        ),
        f"projected_hours_for_{args.project}_steps": round(projected / 3600, 2),
        "wall_s": round(total, 1),
        "eval_returns": _curve(history),
    }
    print(f"sgqn fit {' '.join(argv[1:])}", file=sys.stderr)
    for key, value in figures.items():
        print(f"  {key:<55} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
