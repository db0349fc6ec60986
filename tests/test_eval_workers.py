"""`--eval.workers N`: every mode's evaluation episodes at once in worker processes, reseeded per evaluation."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.envs import ParallelEnv

from sgqn.app.cli import main
from sgqn.app.eval_callback import EvaluationCallback
from sgqn.app.evaluate import evaluate_checkpoint
from sgqn.data.datamodule import DMCDataModule
from sgqn.evaluation.episodes import EVAL_SEED_OFFSET, run_batched_episodes
from sgqn.nets.config import NetConfig
from sgqn.training.module import AgentModule

MODES = ["train", "color_hard"]
ROOT = Path(__file__).resolve().parents[1]


def _datamodule() -> DMCDataModule:
    return DMCDataModule(task="cartpole_balance", image_size=32, render_quality="fast", seed=3)


def _constant_policy() -> TensorDictModule:
    return TensorDictModule(
        lambda pixels: torch.full((*pixels.shape[:-3], 1), 0.3), in_keys=["pixels"], out_keys=["action"]
    )


def test_batched_episodes_are_the_episodes_their_seed_names() -> None:
    dm = _datamodule()
    functions = [dm.env_fn(mode, seed=11, reseed_mode=True) for mode in MODES]
    env = ParallelEnv(len(functions), functions, mp_start_method="spawn", num_threads=torch.get_num_threads())
    try:
        returns, first = run_batched_episodes(env, _constant_policy(), rounds=2, seed=500)
    finally:
        env.close()
    assert returns.shape == (2, 2) and first.shape[0] == 2 and first.shape[1] == 1000 // 8  # AR 8
    # The oracle: each sub-env built alone and seeded by TorchRL's chain from 500 + round; one episode each.
    for r in range(2):
        seed = 500 + r
        for i, function in enumerate(functions):
            alone = function()
            seed = alone.set_seed(seed)
            episode = alone.rollout(100_000, _constant_policy(), break_when_any_done=True)
            assert episode["next", "reward"].sum().item() == returns[r, i].item()
    assert returns[0].tolist() != returns[1].tolist()  # other seeds, other initial states


def _evaluate(callback: EvaluationCallback, module: AgentModule, dm: DMCDataModule) -> dict[str, Any]:
    trainer = SimpleNamespace(datamodule=dm, loggers=[])
    return callback.evaluate(trainer, module, step=len(callback.history) * 100)  # type: ignore[arg-type]


@pytest.mark.slow  # 40 s
def test_evaluation_k_runs_the_same_episodes_after_a_resume_and_the_workers_keep_our_threads() -> None:
    dm = _datamodule()
    torch.manual_seed(0)
    module = AgentModule(
        algorithm="sac",
        observation_shape=dm.observation_shape,
        action_dim=dm.action_dim,
        net=NetConfig(num_conv_layers=2),
    )
    threads = torch.get_num_threads()
    options: dict[str, Any] = {"episodes": 2, "modes": MODES, "saliency_every_evals": 0, "workers": 2}
    first = EvaluationCallback(**options)
    try:
        before = _evaluate(first, module, dm)
        assert torch.get_num_threads() == threads  # TorchRL would have taken one per worker
        second = _evaluate(first, module, dm)
        state = first.state_dict()
    finally:
        first.close()
    assert torch.get_num_threads() == threads and first._batched is None
    assert before["eval/workers_startup_seconds"] > 0 and "eval/workers_startup_seconds" not in second
    assert before["eval/seconds"] > 0
    for mode in MODES:  # 2 episodes per mode over 2 workers: one round
        assert before[f"eval/{mode}/return_std"] >= 0
    returns = [{k: v for k, v in m.items() if "return" in k} for m in (before, second)]
    assert returns[0] != returns[1]  # evaluation 1 reseeds: other initial states

    resumed = EvaluationCallback(**options)
    resumed.load_state_dict({**state, "history": state["history"][:1]})  # as if it crashed after evaluation 0
    try:
        again = _evaluate(resumed, module, dm)
    finally:
        resumed.close()
    assert {k: v for k, v in again.items() if "return" in k} == returns[1]


def test_sgqn_fit_with_eval_workers_counts_their_start_once_and_stops_them(tmp_path: Path) -> None:
    path = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "-c", "conf/tiny.yaml", "--steps", "60", "--no-mlflow",
         "--data.init_steps", "20", "--eval.every_agent_steps", "40", "--eval.modes", "[train, color_hard]",
         "--eval.video_every_evals", "0", "--eval.saliency_every_evals", "0", "--eval.workers", "1",
         "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    # A worker left running would keep the process from exiting (TorchRL's workers are not daemons).
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(path.read_text())
    assert figures["eval_workers_startup_s"] > 0 and figures["seconds_per_evaluation"] > 0
    assert [point["agent_steps"] for point in figures["eval_returns"]] == [40, 60]
    assert all(
        set(point) >= {"eval/train/return_mean", "eval/color_hard/return_mean"}
        for point in figures["eval_returns"]
    )


@pytest.mark.slow  # 50 s; the fit with workers stays in the default suite
def test_sgqn_evaluate_with_workers_reports_the_episodes_it_ran_and_repeats_them(tmp_path: Path) -> None:
    main(["fit", "-c", "conf/tiny.yaml", "--data.num_agent_steps", "20", "--data.init_steps", "10",
          "--eval.every_agent_steps", "0", "--eval.at_end", "false", "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path / "outputs")])  # fmt: skip
    (checkpoint,) = (tmp_path / "outputs").rglob("last.ckpt")
    out = tmp_path / "results"
    main(["evaluate", "--ckpt", str(checkpoint), "--modes", "train", "color_hard", "--episodes", "3",
          "--workers", "2", "--out", str(out), "--no-log"])  # fmt: skip
    with (out / "results.csv").open() as f:
        rows = {row["mode"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(MODES) and all(row["episodes"] == "3" for row in rows.values())
    # The same episodes again (the seeds are the checkpoint's and --seed-offset's): 3 per mode, 2 rounds.
    again = evaluate_checkpoint(
        str(checkpoint), MODES, episodes=3, seed_offset=EVAL_SEED_OFFSET + 1, workers=2
    )
    assert {mode: len(returns) for mode, returns in again.items()} == {mode: 3 for mode in MODES}
    for mode in MODES:
        assert float(rows[mode]["return_mean"]) == pytest.approx(statistics.fmean(again[mode]), abs=1e-6)
