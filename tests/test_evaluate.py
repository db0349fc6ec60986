"""`sgqn evaluate` without training: finding a run's checkpoints, and the --help text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sgqn.app.cli import main
from sgqn.app.evaluate import evaluate_parser
from sgqn.app.tracking import CHECKPOINT_DIR_TAG, find_checkpoint
from sgqn.envs import MODES


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
