"""`sgqn evaluate`: finding a run's checkpoints, the --help text, and the saliency scores it tables beside
the returns (on two tiny checkpoints of a 20-step `sgqn fit`)."""

from __future__ import annotations

import csv
import math
import re
import statistics
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sgqn.app.cli import main
from sgqn.app.evaluate import checkpoint_saliency, evaluate_parser, load_checkpoint, log_tables_to_runs
from sgqn.app.evaluation_tables import SALIENCY_SCORES, markdown_table, results_table, write_tables
from sgqn.app.runs import CHECKPOINT_DIR_TAG, find_checkpoint
from sgqn.envs import MODES
from sgqn.evaluation.generalization import saliency_report

TINY = str(Path(__file__).resolve().parents[1] / "conf" / "tiny.yaml")


@pytest.fixture
def store(tmp_path: Path) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return MlflowClient(tracking_uri=uri), uri


def _run(
    client: MlflowClient, name: str, experiment: str = "study", start_time: int | None = None, **tags: str
) -> str:
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client.create_run(experiment_id, start_time=start_time, run_name=name, tags=tags).info.run_id


def test_find_checkpoint_in_the_tagged_folder(tmp_path: Path, store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    folder = tmp_path / "outputs" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("last.ckpt", "agent_steps=100.ckpt"):
        (folder / name).write_bytes(b"weights")
    run_id = _run(client, "sgqn-seed0", **{CHECKPOINT_DIR_TAG: str(folder)})
    assert find_checkpoint(run_id, uri) == folder / "last.ckpt"  # by id
    assert find_checkpoint("sgqn-seed0", uri) == folder / "last.ckpt"  # by name, any experiment
    assert find_checkpoint("sgqn-seed0", uri, experiment="study") == folder / "last.ckpt"
    assert find_checkpoint(run_id, uri, which="agent_steps=100") == folder / "agent_steps=100.ckpt"
    with pytest.raises(LookupError):
        find_checkpoint("sgqn-seed0", uri, experiment="another")
    with pytest.raises(LookupError):
        find_checkpoint("no-such-run", uri)
    with pytest.raises(FileNotFoundError):
        find_checkpoint(run_id, uri, which="agent_steps=200")


def test_find_checkpoint_downloads_an_uploaded_one(tmp_path: Path, store: tuple[MlflowClient, str]) -> None:
    """The folder is gone (another machine): fall back to the artifact `log_model` uploaded."""
    client, uri = store
    run_id = _run(client, "remote", **{CHECKPOINT_DIR_TAG: str(tmp_path / "elsewhere")})
    upload = tmp_path / "upload" / "last.ckpt"
    upload.parent.mkdir()
    upload.write_bytes(b"uploaded weights")
    client.log_artifact(run_id, str(upload), artifact_path="last")  # where Lightning's logger puts it
    found = find_checkpoint("remote", uri, download_dir=tmp_path / "downloads")
    assert found.name == "last.ckpt" and found.read_bytes() == b"uploaded weights"
    assert found.is_relative_to(tmp_path / "downloads")
    bare = _run(client, "nothing")  # no tag, no artifact
    with pytest.raises(FileNotFoundError, match=r"no last\.ckpt"):
        find_checkpoint(bare, uri)


def test_newest_run_of_a_name_wins(tmp_path: Path, store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    for i in range(2):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / "last.ckpt").write_bytes(b"x")
        _run(client, "repeated", start_time=1_000 * (i + 1), **{CHECKPOINT_DIR_TAG: str(folder)})
    assert find_checkpoint("repeated", uri).parent.name == "run1"


def test_evaluate_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    parser = evaluate_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        flag = action.option_strings[0]
        # the flag's block: from its line to the next flag's line
        block = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|^\S|\Z)", text, re.S | re.M)
        assert block and "(default:" in block.group(0), flag
    for flag in ("--ckpt", "--run", "--experiment", "--tracking-uri", "--modes", "--episodes"):
        assert flag in text
    assert all(mode in " ".join(text.split()) for mode in MODES)  # the choices of --modes
    for bad in ("nonsense", "distracting_cs", "distracting_cs@0.7", "video_hard@0.1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--ckpt", "a.ckpt", "--modes", bad])
    args = parser.parse_args(["--run", "a", "b", "--run", "c", "--modes", "distracting_cs@0.1"])
    assert args.run == ["a", "b", "c"] and args.modes == ["distracting_cs@0.1"]


# --------------------------------------------------------------------------- saliency scores


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two checkpoints of one tiny SGQN run (cartpole_balance, 32 px): after 10 and 20 agent steps."""
    root = tmp_path_factory.mktemp("tiny")
    main(["fit", "-c", TINY, "--data.num_agent_steps", "20", "--data.init_steps", "10",
          "--eval.every_agent_steps", "0", "--eval.at_end", "false", "--trainer.logger", "false",
          "--checkpoint.every_agent_steps", "10", "--trainer.default_root_dir", str(root / "outputs")])  # fmt: skip
    found = sorted((root / "outputs").rglob("agent_steps=*.ckpt"), key=lambda p: len(p.name))
    assert [p.name for p in found] == ["agent_steps=10.ckpt", "agent_steps=20.ckpt"]
    return found


def _focus_by_hand(path: Path, mode: str, states: int) -> dict[str, float]:
    """The oracle: `saliency_report` on the checkpoint's train env and `mode`'s, seeded as the episodes."""
    module, datamodule = load_checkpoint(str(path))
    settings = datamodule.env_settings
    seed = settings.seed + evaluate_parser().get_default("seed_offset")
    envs = {m: datamodule.make_env(mode=m, seed=seed) for m in ("train", mode)}
    report = saliency_report(
        module,
        envs,
        module.policy_module(deterministic=True),
        frame_stack=settings.frame_stack,
        num_states=states,
        task=settings.task,
    )
    scores = {f"saliency_{k}": v for k, v in report.focus[mode].items()}
    return scores | {f"predicted_{k}": v for k, v in report.predicted_focus[mode].items()}


def test_evaluate_prints_and_tables_the_saliency_scores_beside_the_returns(
    checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    main(["evaluate", "--ckpt", *map(str, checkpoints), "--modes", "color_hard", "--episodes", "1",
          "--saliency-states", "3", "--out", str(out), "--no-log"])  # fmt: skip
    printed = capsys.readouterr().out
    header = (
        "| mode | return | seeds | episodes | precision | TID | mass on body | predicted precision "
        "| predicted TID | predicted mass |"
    )
    assert header in printed and "–: none does (missing, not 0)" in printed
    with (out / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))  # color_hard only: the train env gave the states, no row
    assert row["mode"] == "color_hard" and row["seeds"] == "2" and row["episodes"] == "2"
    # By hand: each checkpoint's scores from `saliency_report` itself, then mean ± std over the two.
    by_hand = [_focus_by_hand(path, "color_hard", 3) for path in checkpoints]
    for score in SALIENCY_SCORES:
        values = [h[score] for h in by_hand if math.isfinite(h.get(score, math.nan))]
        if not values:  # undefined on these states (e.g. nothing predicted salient): missing, not 0
            assert row[score] == "" and row[f"{score}_n"] == "0", score
            continue
        assert float(row[score]) == pytest.approx(statistics.fmean(values)), score
        assert row[f"{score}_n"] == str(len(values))
        assert 0 <= float(row[score]) <= 1
    line = next(line for line in printed.splitlines() if line.startswith("| color_hard |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 10
    if row["saliency_precision_std"]:
        mean, std = float(row["saliency_precision"]), float(row["saliency_precision_std"])
        assert cells[4].startswith(f"{mean:.2f} ± {std:.2f}")
    # one checkpoint, the scores of `checkpoint_saliency` are the oracle's
    module, datamodule = load_checkpoint(str(checkpoints[0]))
    alone = checkpoint_saliency(
        module, datamodule, ["color_hard"], evaluate_parser().get_default("seed_offset"), 3
    )
    expected = {k: v for k, v in by_hand[0].items() if math.isfinite(v)}
    assert alone == {"color_hard": pytest.approx(expected)}


def test_saliency_columns_by_hand_with_missing_scores(tmp_path: Path) -> None:
    """Three checkpoints' scores by hand: means and stds over those that define a score, `–` for none."""
    returns = {"a": {"train": [10.0, 20.0]}, "b": {"train": [30.0]}, "c": {"train": [50.0]}}
    saliency = {
        "a": {"train": {"saliency_precision": 0.5, "saliency_tid": 0.2, "saliency_mass_on_body": 0.3}},
        "b": {"train": {"saliency_precision": 0.7, "saliency_tid": 0.4}},  # its mass undefined
        "c": {"train": {"saliency_precision": 0.9, "saliency_tid": 0.6, "predicted_precision": 0.8}},
    }
    (row,) = results_table(returns, saliency)
    assert (row["return_mean"], row["seeds"], row["episodes"]) == (
        pytest.approx(95 / 3),
        3,
        4,
    )  # seeds' means 15, 30, 50
    assert row["saliency_precision"] == pytest.approx(0.7) and row["saliency_precision_n"] == 3
    assert row["saliency_precision_std"] == pytest.approx(statistics.pstdev([0.5, 0.7, 0.9]))
    assert (
        row["saliency_mass_on_body"],
        row["saliency_mass_on_body_std"],
        row["saliency_mass_on_body_n"],
    ) == (
        0.3,
        None,  # one checkpoint has it: no std
        1,
    )
    assert row["saliency_recall"] is None and row["saliency_recall_n"] == 0  # nobody has it: missing
    assert row["predicted_precision"] == 0.8 and row["predicted_tid"] is None
    table = markdown_table([row])
    assert (
        "| precision | TID | mass on body | predicted precision | predicted TID | predicted mass |" in table
    )
    assert (
        "| train | 31.7 ± 14.3 | 3 | 4 | 0.70 ± 0.16 | 0.40 ± 0.16 | 0.30 (1/3) | 0.80 (1/3) | – | – |"
        in table
    )
    csv_path, _ = write_tables([row], tmp_path)
    with csv_path.open() as f:
        (written,) = list(csv.DictReader(f))
    assert (
        written["saliency_recall"] == ""
        and written["predicted_tid"] == ""
        and float(written["saliency_tid"]) == pytest.approx(0.4)
    )

    # No predictor anywhere (e.g. SAC checkpoints): no predicted columns; no saliency asked: returns only.
    (plain,) = results_table(returns, {k: {"train": {"saliency_precision": 0.5}} for k in returns})
    assert not any(key.startswith("predicted") for key in plain) and plain["saliency_tid"] is None
    (bare,) = results_table(returns)
    assert list(bare) == ["mode", "return_mean", "return_std", "seeds", "episodes"]
    assert (
        markdown_table([bare])
        == "| mode | return | seeds | episodes |\n|---|---|---|---|\n| train | 31.7 ± 14.3 | 3 | 4 |\n"
    )


def test_the_scores_are_logged_to_the_runs(tmp_path: Path, store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    run_id = _run(client, "scored")
    (row,) = results_table(
        {"a": {"video_hard": [5.0]}}, {"a": {"video_hard": {"saliency_precision": 0.25, "saliency_tid": 0.5}}}
    )
    files = write_tables([row], tmp_path / "out")
    log_tables_to_runs([(run_id, uri)], files, [row])
    metrics = client.get_run(run_id).data.metrics
    assert metrics == {
        "final/video_hard/return_mean": 5.0,
        "final/video_hard/saliency_precision": 0.25,
        "final/video_hard/saliency_tid": 0.5,
    }  # the missing scores are not logged (as 0 or otherwise)
    with pytest.raises(SystemExit):
        evaluate_parser().parse_args(["--ckpt", "a.ckpt", "--saliency-states", "x"])
