"""End to end: `sgqn fit` on the tiny config writes an MLflow run; `sgqn evaluate` tables checkpoints
found from the run and given as files."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow import MlflowClient

from cli_helpers import fit_args
from sgqn.app.cli import main
from sgqn.app.runs import CHECKPOINT_DIR_TAG, find_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_fit_then_evaluate(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    main(fit_args(tmp_path, "--eval.at_start", "true"))
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    metrics, params = run.data.metrics, run.data.params
    for key in [
        "train/loss_critic",
        "train/loss_actor",
        "train/alpha",
        "train/entropy",
        "train/q1_mean",
        "train/mask_coverage",
        "train/loss_consistency",
        "train/loss_attribution",
        "train/episode_return",
        "agent/steps_per_s",
        "train/updates_per_s",
        "eval/train/return_mean",
        "eval/color_hard/return_mean",
        "eval/color_hard/generalization_gap",
        "eval/color_hard/saliency_iou",
    ]:
        assert key in metrics, key
    assert metrics["agent/steps"] == 200 and metrics["train/updates"] == 200
    assert (
        params["algorithm"] == "sgqn"
        and params["task"] == "cartpole_balance"
        and params["quantile"] == "0.98"
    )
    history = client.get_metric_history(run.info.run_id, "eval/train/return_mean")
    assert [m.step for m in history] == [0, 100, 200]  # the untrained policy, then every 100 steps
    artifacts = _artifacts(client, run.info.run_id)
    assert "config.yaml" in artifacts
    assert {f"saliency/step_{s:08d}.png" for s in (0, 100, 200)} <= set(artifacts)
    videos = {f"videos/{mode}_step_{s:08d}.mp4" for mode in ("train", "color_hard") for s in (0, 200)}
    assert videos <= set(artifacts) and not any("step_00000100.mp4" in a for a in artifacts)  # every 2nd
    # checkpoints are kept once, in the local folder the run's checkpoint_dir tag names, not uploaded
    assert not any(a.endswith(".ckpt") for a in artifacts)
    (checkpoint,) = (tmp_path / "outputs").rglob("agent_steps=200.ckpt")
    folder = Path(run.data.tags[CHECKPOINT_DIR_TAG])
    assert folder.is_absolute() and folder == checkpoint.parent.resolve()
    last = find_checkpoint(run.info.run_id, uri)
    assert last == folder / "last.ckpt" and find_checkpoint(run.info.run_name, uri, experiment="tiny") == last
    assert find_checkpoint(run.info.run_id, uri, which="agent_steps=100").is_file()

    second_seed = tmp_path / "seed1.ckpt"  # stands in for another seed's checkpoint
    shutil.copy(checkpoint, second_seed)
    out = tmp_path / "results"
    main(
        [
            "evaluate",
            "--run",
            run.info.run_name,  # resolved to its last.ckpt
            "--tracking-uri",
            uri,
            "--ckpt",
            str(second_seed),
            "--modes",
            "train",
            "--episodes",
            "1",
            "--out",
            str(out),
        ]
    )
    table = (out / "results.md").read_text()
    assert "| train |" in table and "| 2 | 2 |" in table  # two "seeds", one episode each
    assert "evaluation/results.csv" in _artifacts(client, run.info.run_id)
