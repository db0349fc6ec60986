"""The GPU suite (issue #13 Part 2) gets one call on a machine lent for minutes: its plumbing is checked
here on CPU, at tiny size, so that the call spends its time measuring."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sgqn.app.fit import check_fit_args
from sgqn.training.speed import SpeedOptions

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_suite = _load("gpu_suite")


speed_variants = importlib.import_module("speed_variants")  # on sys.path once gpu_suite is loaded


@pytest.mark.parametrize("variant", [v for v in speed_variants.CUDA_VARIANTS if v != "reference"])
def test_every_cuda_row_is_valid_sgqn_fit_flags_that_set_what_the_row_timed(variant: str) -> None:
    flags = speed_variants.fit_flags(variant)
    check_fit_args(["-c", str(ROOT / "conf" / "drq.yaml"), "--trainer.logger", "false", *flags])
    speed = dict(zip(flags[::2], flags[1::2], strict=True))
    for field, value in speed_variants.speed_fields(variant, "cuda").items():
        assert speed[f"--model.speed.{field}"] == str(value).lower()
    assert ("--trainer.benchmark" in speed) == ("benchmark" in variant)


def test_variants_start_from_sgqn_fit_defaults_on_cuda_and_from_channels_last_off_on_cpu() -> None:
    # A parity run in the fastest row's setting trains what that row timed: the CUDA base is the module's.
    assert SpeedOptions(**speed_variants.speed_fields("default", "cuda")) == SpeedOptions()
    assert SpeedOptions(**speed_variants.speed_fields("default", "cpu")) == SpeedOptions()
    assert speed_variants.speed_fields("tf32", "cuda") == {"tf32": True}
    assert speed_variants.speed_fields("tf32", "cpu") == {
        "channels_last": False,
        "tf32": True,
    }  # the CPU table's
    assert speed_variants.speed_fields("nchw+tf32+graph", "cuda") == {
        "channels_last": False, "tf32": True, "graph_update": True
    }  # fmt: skip
    assert speed_variants.trainer_args("bf16+graph+benchmark") == {"benchmark": True}
    for bad in ("tf23", "reference+tf32"):
        with pytest.raises(ValueError, match="unknown speed variant"):
            speed_variants.tokens(bad)
    with pytest.raises(ValueError, match=r"update_step\.py only"):
        speed_variants.fit_flags("reference")


def test_busy_time_counts_overlapping_and_nested_intervals_once() -> None:
    update_step = _load("update_step")
    assert update_step.busy_ms([]) == 0
    # µs: [0, 10] with [2, 5] nested and [8, 12] overlapping → 12; then [20, 23] → 15 µs in all.
    assert update_step.busy_ms([(8.0, 12.0), (0.0, 10.0), (2.0, 5.0), (20.0, 23.0)]) == pytest.approx(0.015)


def test_the_markdown_names_failed_and_missing_parts_rather_than_filling_them_in() -> None:
    figures = {
        "device": "cuda",
        "parts": {
            "env": {"status": "ok", "gpu": "NVIDIA H200", "torch": "2.11.0", "python": "3.12.3", "seconds": 9},
            "update": {"status": "exit 1", "seconds": 80, "rows": [
                {"algorithm": "sgqn", "variant": "reference", "ms_per_update": 41.25, "best_ms": 40.0},
                {"algorithm": "sac", "variant": "default", "ms_per_update": 6.5, "best_ms": 6.1, "busy_ms": 5.04},
                {"algorithm": "sgqn", "variant": "default", "ms_per_update": 10.5, "best_ms": 10.0},
                {"algorithm": "sgqn", "variant": "tf32+graph+compile_update", "failed": "RuntimeError: boom"},
            ], "fastest": {"sac": "default", "sgqn": "default"}},  # as update_step.py writes it
            "throughput": {"status": "ok", "seconds": 200, "variant": "tf32+benchmark", "overlap_true": {
                "learning_steps_per_s (env + updates, no evaluation)": 20.5}},
            "parity": {"status": "not run: the suite's time was spent", "seconds": 0},
        },
    }  # fmt: skip
    text = gpu_suite.markdown(figures)
    assert text.startswith("GPU: NVIDIA H200") and "torch 2.11.0" in text
    assert "| update (ms) | sac | sgqn |" in text
    assert "| reference | — | 41.2 |" in text and "| default | 6.5 (5.0) | 10.5 |" in text
    assert "in brackets: the GPU's busy ms per update" in text
    assert "| tf32+graph+compile_update | — | RuntimeError: boom |" in text
    assert "SGQN learner, reference order ÷ fastest (default): 4.0× (best cycles)" in text
    assert "- throughput variant: tf32+benchmark (--model.speed.tf32 true --trainer.benchmark true)" in text
    assert '- throughput overlap_true: {"learning_steps_per_s (env + updates, no evaluation)": 20.5}' in text
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
    assert set(rows) == {
        ("sgqn", "reference"),
        *((a, v) for a in ("sgqn", "sac") for v in ("default", "tf32", "tf32+graph")),
    }
    assert all(r["busy_ms"] > 0 for r in rows.values())  # 2 profiled updates per row (CPU ops here)
    assert all(r["ms_per_update"] > 0 and r["updates_timed"] == 2 for r in rows.values())
    ours = [r for r in parts["update"]["rows"] if r["algorithm"] == "sgqn" and r["variant"] != "reference"]
    assert parts["throughput"]["variant"] == min(ours, key=lambda r: r["best_ms"])["variant"]  # the fastest
    for overlap in ("false", "true"):
        run = parts["throughput"][f"overlap_{overlap}"]
        assert run["agent_steps"] == 80 and run["learning_steps_per_s (env + updates, no evaluation)"] > 0
        assert (run["eval_workers_startup_s"] > 0) == (overlap == "true")  # ours: evaluation in workers
    assert parts["parity"]["fastest_sac"] == "ieee"  # as given (else the update part's fastest SAC row)
    variants = {"default", "ieee"}  # two runs at once: `sgqn fit`'s defaults and the given one
    assert set(parts["parity"]) - {"status", "seconds", "fastest_sac"} == variants
    for variant in variants:
        curve = parts["parity"][variant]["eval_returns"]
        assert [point["agent_steps"] for point in curve] == [0, 60, 120]
        assert all("eval/train/return_mean" in point for point in curve)
    table = (tmp_path / "suite.md").read_text()
    assert "| update (ms) | sac | sgqn |" in table and "| reference | — | " in table
    assert "SGQN learner, reference order ÷ fastest (" in table and "- part parity: ok" in table


@pytest.mark.slow  # a real 14 s fit
def test_train_throughput_without_mlflow_reports_the_curve_up_to_the_final_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "-c", "conf/tiny.yaml", "--steps", "60", "--no-mlflow",
         "--data.init_steps", "20", "--eval.every_agent_steps", "40", "--eval.modes", "[train]",
         "--eval.video_every_evals", "0", "--eval.saliency_every_evals", "0", "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--trainer.logger false" in done.stderr and "mlflow" not in done.stderr.lower()
    figures = json.loads(path.read_text())
    assert "status" not in figures  # the finished run's figures replaced the partial ones
    assert figures["agent_steps"] == 60 and figures["updates"] == 60  # burst of 20, then one per step
    # At 40 (the cadence, within the learning phase) and at the end (after the last batch).
    assert [point["agent_steps"] for point in figures["eval_returns"]] == [40, 60]
    assert figures["learning_steps_per_s (env + updates, no evaluation)"] > 0
