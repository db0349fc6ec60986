"""The GPU suite (issue #13 Part 2) gets one call on a machine lent for minutes: its plumbing is checked
here on CPU, at tiny size, so that the call spends its time measuring."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sgqn.cli import check_fit_args

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
assert spec is not None and spec.loader is not None
gpu_suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_suite)


@pytest.mark.parametrize("variant", sorted(gpu_suite.VARIANT_FLAGS))
def test_every_parity_variant_is_valid_sgqn_fit_flags(variant: str) -> None:
    check_fit_args(["-c", str(ROOT / "conf" / "drq.yaml"), "--trainer.logger", "false",
                    *gpu_suite.VARIANT_FLAGS[variant]])  # fmt: skip


def test_the_markdown_names_failed_and_missing_parts_rather_than_filling_them_in() -> None:
    figures = {
        "device": "cuda",
        "parts": {
            "env": {"status": "ok", "gpu": "NVIDIA H200", "torch": "2.11.0", "python": "3.12.3", "seconds": 9},
            "update": {"status": "exit 1", "seconds": 80, "rows": [
                {"algorithm": "sgqn", "variant": "reference", "ms_per_update": 41.25, "best_ms": 40.0},
                {"algorithm": "sac", "variant": "fp32", "ms_per_update": 6.5, "best_ms": 6.1},
                {"algorithm": "sgqn", "variant": "fp32", "ms_per_update": 10.5, "best_ms": 10.0},
                {"algorithm": "sgqn", "variant": "tf32+cudagraphs", "failed": "RuntimeError: boom"},
            ]},
            "parity": {"status": "not run: the suite's time was spent", "seconds": 0},
        },
    }  # fmt: skip
    text = gpu_suite.markdown(figures)
    assert text.startswith("GPU: NVIDIA H200") and "torch 2.11.0" in text
    assert "| update (ms) | sac | sgqn |" in text
    assert "| reference | — | 41.2 |" in text and "| fp32 | 6.5 | 10.5 |" in text
    assert "| tf32+cudagraphs | — | RuntimeError: boom |" in text
    assert "SGQN learner, reference order ÷ fastest (fp32): 4.0× (best cycles)" in text
    assert "- part parity: not run: the suite's time was spent (0 s)" in text


@pytest.mark.slow
def test_the_smoke_suite_runs_every_part_and_writes_its_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--smoke", "--out", str(tmp_path), "--budget-s", "600",
         "--parity-variant", "ieee"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tar.gz", "suite.json", "suite.md"]  # ≤ 8 back
    with tarfile.open(tmp_path / "logs.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"logs/env.log", "logs/update.log", "logs/parity_0.log", "logs/parity_1.json"} <= names
    figures = json.loads((tmp_path / "suite.json").read_text())
    parts = figures["parts"]
    assert [parts[p]["status"] for p in gpu_suite.PARTS] == ["ok"] * 4
    rows = {(r["algorithm"], r["variant"]): r for r in parts["update"]["rows"]}
    assert set(rows) == {("sgqn", "reference"), *((a, v) for a in ("sgqn", "sac") for v in ("fp32", "tf32"))}
    assert all(r["ms_per_update"] > 0 and r["updates_timed"] == 2 for r in rows.values())
    for overlap in ("false", "true"):
        run = parts["throughput"][f"overlap_{overlap}"]
        assert run["agent_steps"] == 80 and run["learning_steps_per_s (env + updates, no evaluation)"] > 0
    assert parts["parity"]["fastest_sac"] == "ieee"  # as given (else the update part's fastest SAC row)
    variants = {"fp32", "ieee"}  # two runs at once: the default precision and the given one
    assert set(parts["parity"]) - {"status", "seconds", "fastest_sac"} == variants
    for variant in variants:
        curve = parts["parity"][variant]["eval_returns"]
        assert [point["env_steps"] for point in curve] == [0, 60, 120]
        assert all("eval/train/return_mean" in point for point in curve)
    table = (tmp_path / "suite.md").read_text()
    assert "| update (ms) | sac | sgqn |" in table and "| reference | — | " in table
    assert "SGQN learner, reference order ÷ fastest (" in table and "- part parity: ok" in table


def test_train_throughput_without_mlflow_reports_the_curve_up_to_the_final_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "-c", "conf/tiny.yaml", "--steps", "60", "--no-mlflow",
         "--data.init_steps", "20", "--eval.every_env_steps", "40", "--eval.modes", "[train]",
         "--eval.video_every_evals", "0", "--eval.saliency_every_evals", "0", "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--trainer.logger false" in done.stderr and "mlflow" not in done.stderr.lower()
    figures = json.loads(path.read_text())
    assert "status" not in figures  # the finished run's figures replaced the partial ones
    assert figures["agent_steps"] == 60 and figures["updates"] == 60  # burst of 20, then one per step
    # At 40 (the cadence, within the learning phase) and at the end (after the last batch).
    assert [point["env_steps"] for point in figures["eval_returns"]] == [40, 60]
    assert figures["learning_steps_per_s (env + updates, no evaluation)"] > 0
