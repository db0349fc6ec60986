"""`sgqn sweep`: the grid, the trials' command lines, and a tiny sweep on local Ray end to end, with a
trial whose worker is SIGKILLed mid-run and retried from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sgqn.app.cli import main
from sgqn.app.errors import ConfigError
from sgqn.app.sweeps.spec import load_sweep, parse_overrides
from sgqn.app.sweeps.table import format_table
from sgqn.app.sweeps.tracking import KIND_SWEEP, KIND_TAG, PARENT_TAG, TRIAL_TAG, expected_trials

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "conf" / "tiny.yaml"


def sweep_file(folder: Path, **extra: object) -> Path:
    lines = [
        "name: tiny",
        "experiment_name: tiny_sweep",
        f"config: {TINY}",
        "grid:",
        "  algorithm: [sac, sgqn]",
        "  task: [cartpole_balance]",
        "  seed: [0, 1]",
        "overrides:",
        "  data.num_agent_steps: 120",
        "  data.init_steps: 20",
        "  eval.every_agent_steps: 60",
        "  eval.modes: [train]",
        "  eval.saliency_every_evals: 0",
        "  eval.video_every_evals: 0",
        "  checkpoint.every_agent_steps: 60",
        "  progress.every_agent_steps: 20",
        "resources: {cpu: 1}",
        "max_failures: 2",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    path = folder / "tiny_sweep.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_grid_expands_to_named_trials_with_plain_fit_commands(tmp_path: Path) -> None:
    spec = load_sweep(sweep_file(tmp_path), {"data.batch_size": "8"})
    trials = spec.trials()
    assert [t.name for t in trials] == [
        "sac-cartpole_balance-s0",
        "sac-cartpole_balance-s1",
        "sgqn-cartpole_balance-s0",
        "sgqn-cartpole_balance-s1",
    ]
    argv = trials[3].argv("/out/x")
    assert argv[:2] == ["-c", str(TINY)]
    pairs = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert pairs["--model.algorithm"] == "sgqn" and pairs["--data.seed"] == "1"
    assert pairs["--eval.modes"] == '["train"]' and pairs["--data.batch_size"] == "8"  # command line wins
    assert argv[-4:] == ["--trainer.default_root_dir", "/out/x", "--resume", "auto"]
    assert trials[0].record()["num_agent_steps"] == 120
    # any option can be swept; its value names the trial
    spec.grid["model.sgqn.quantile"] = [0.9, 0.95]
    assert spec.trials()[1].name == "sac-cartpole_balance-s0-quantile0.95"
    assert spec.fingerprint() != load_sweep(sweep_file(tmp_path)).fingerprint()


def test_config_templates_and_bad_sweep_files(tmp_path: Path) -> None:
    path = sweep_file(tmp_path)
    text = path.read_text()
    (tmp_path / "sgqn_cartpole_balance.yaml").write_text("model: {hidden_dim: 64}\n")
    (tmp_path / "sac_cartpole_balance.yaml").write_text("model: {hidden_dim: 32}\n")
    path.write_text(text.replace(f"config: {TINY}", 'config: ["{algorithm}_{task}.yaml"]'))
    trials = load_sweep(path).trials()
    assert trials[2].configs == (str(tmp_path / "sgqn_cartpole_balance.yaml"),)
    # per-algorithm options, and no base config at all (the code's defaults are the paper's settings)
    path.write_text(
        text.replace(
            f"config: {TINY}", "algorithm_overrides: {sgqn: {model.sgqn.decoder_channels: [4, 8, 4]}}"
        )
    )
    trials = load_sweep(path).trials()
    assert trials[0].configs == () and "model.sgqn.decoder_channels" not in dict(trials[0].options)
    assert dict(trials[2].options)["model.sgqn.decoder_channels"] == "[4, 8, 4]"
    for bad, message in [
        (text + "gird: {}\n", "unknown key"),
        (text.replace("  data.init_steps: 20", "  seed: 3"), "both swept"),
        (text.replace(str(TINY), "missing.yaml"), "does not exist"),
        (text.replace("resources: {cpu: 1}", "resources: {cpu: 0}"), "resources"),
    ]:
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_sweep(path)
    assert parse_overrides(["--a.b", "1", "--c.d=[x]"]) == {"a.b": "1", "c.d": "[x]"}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--a.b"])


def test_environment_variables_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sweep_file(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("  data.init_steps: 20", "  data.dmcgb_root: ${SGQN_TEST_ROOT:-null}"))
    monkeypatch.delenv("SGQN_TEST_ROOT", raising=False)
    assert dict(load_sweep(path).trials()[0].options)["data.dmcgb_root"] == "null"  # the embedded data
    monkeypatch.setenv("SGQN_TEST_ROOT", "/data/dmcgb")
    assert dict(load_sweep(path).trials()[0].options)["data.dmcgb_root"] == "/data/dmcgb"
    path.write_text(text.replace("  data.init_steps: 20", "  data.dmcgb_root: ${SGQN_TEST_UNSET}"))
    with pytest.raises(ConfigError, match=r"uses \$\{SGQN_TEST_UNSET\}, which is not set"):
        load_sweep(path)


def _dry_run(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> tuple[int, str, str]:
    """`sgqn sweep -c path --dry-run …` in this process: (exit status, stdout, stderr)."""
    try:
        main(["sweep", "-c", str(path), "--dry-run", *extra])
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


# (edit of the sweep file or extra command-line words, the expected error after "sgqn: error: ")
BAD_SWEEPS = {
    "grid key": (("  seed: [0, 1]", "  seeds: [0, 1]"), "{path}: grid key 'seeds' is not a sweep field "
                 "(algorithm, task, seed) or an `sgqn fit` option (did you mean 'seed'?)"),
    "grid option": (("  seed: [0, 1]", "  seed: [0, 1]\n  model.quantil: [0.5]"), "{path}: grid key "
                    "'model.quantil' is not a sweep field (algorithm, task, seed) or an `sgqn fit` option "
                    "(did you mean 'model.sgqn.quantile'?)"),
    "overrides key": (("  data.init_steps: 20", "  data.init_step: 20"),
                      "{path}: overrides key 'data.init_step' is not a sweep field (algorithm, task, seed) or an "
                      "`sgqn fit` option (did you mean 'data.init_steps'"),
    "renamed key": (("  data.init_steps: 20", "  model.quantile: 0.9"),
                    "{path}: overrides key 'model.quantile' is not a sweep field (algorithm, task, seed) or an "
                    "`sgqn fit` option (model.quantile was renamed model.sgqn.quantile)"),
    "algorithm_overrides key": (
        ("max_failures: 2", "max_failures: 2\nalgorithm_overrides: {sgqn: {model.sgqn.quantle: 0.9}}"),
        "{path}: algorithm_overrides.sgqn key 'model.sgqn.quantle' is not a sweep field (algorithm, task, seed) "
        "or an `sgqn fit` option (did you mean 'model.sgqn.quantile'?)",
    ),
    "algorithm_overrides algorithm": (
        ("max_failures: 2", "max_failures: 2\nalgorithm_overrides: {sgnq: {model.sgqn.quantile: 0.9}}"),
        "{path}: algorithm_overrides key 'sgnq' is not an algorithm (did you mean 'sgqn'?); valid: sac, svea, "
        "sgqn, drqv2, drqv2_sgqn",
    ),
    "seed": (("  seed: [0, 1]", "  seed: [0, a]"), "{path}: seed 'a' is not a whole number"),
    "command-line option": (
        ["--data.num_agnet_steps", "5"],
        "--data.num_agnet_steps is neither an `sgqn sweep` option nor an `sgqn fit` option (did you mean "
        "--data.num_agent_steps",
    ),
    "sweep option": (["--dry"], "--dry is not an `sgqn sweep` option (did you mean --dry-run?"),
    "a trial's value": (
        ("eval.modes: [train]", "eval.modes: [train, video_medium]"),
        "{path}: trial sac-cartpole_balance-s0: --eval.modes: unknown mode 'video_medium'",
    ),
    "a trial's type": (
        ("  data.init_steps: 20", "  data.init_steps: x"),
        "{path}: trial sac-cartpole_balance-s0: --data.init_steps: expected int or null, got 'x'",
    ),
    "one algorithm's trial": (
        ("max_failures: 2", "max_failures: 2\nalgorithm_overrides: {sgqn: {data.image_size: 30}}"),
        "{path}: trial sgqn-cartpole_balance-s0: --data.image_size 30: sgqn's saliency decoder",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SWEEPS))
def test_the_dry_run_checks_every_key_and_trial_in_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = sweep_file(tmp_path)
    change, expected = BAD_SWEEPS[case]
    extra: list[str] = []
    if isinstance(change, tuple):
        path.write_text(_edit(path.read_text(), *change))
    else:
        extra = change
    code, out, err = _dry_run(capsys, path, *extra)
    assert code == 2 and out == ""
    (line,) = [x for x in err.splitlines() if not x.startswith("(--debug or SGQN_DEBUG=1")]
    assert line.startswith("sgqn: error: " + expected.format(path=path)), line
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no sweeps/, no mlflow.db


def test_the_readme_dry_run_runs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: `sgqn sweep -c conf/sweep/cpu_mini.yaml --dry-run`, DMCGB_ROOT unset: the embedded data
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DMCGB_ROOT", raising=False)
    code, out, err = _dry_run(capsys, REPO / "conf" / "sweep" / "cpu_mini.yaml")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 9 and all(": sgqn fit " in line for line in lines), out
    assert all("--data.dmcgb_root null" in line for line in lines)
    assert "error" not in err and "Seed set" not in err, err
    assert list(tmp_path.iterdir()) == []
    # given a DMCGB_ROOT, the trials use it, and the dry run checks it as the sweep would
    monkeypatch.setenv("DMCGB_ROOT", str(tmp_path / "nope"))
    code, out, err = _dry_run(capsys, REPO / "conf" / "sweep" / "cpu_mini.yaml")
    assert code == 2 and out == ""
    assert "trial sac-cartpole_swingup-s0: --data.dmcgb_root (for eval mode color_hard): " in err
    assert list(tmp_path.iterdir()) == []


def test_live_table_lists_every_trial() -> None:
    text = format_table(
        "mini",
        [
            {"trial": "sac-x-s0", "state": "DONE", "agent_steps": 100, "total_steps": 100, "attempt": 1,
             "eval/train/return_mean": 812.4, "eval/video_hard/return_mean": 301.0},
            {"trial": "sgqn-x-s0", "state": "PENDING"},
        ],
        75.0,
    )  # fmt: skip
    lines = text.splitlines()
    assert "1 done, 1 pending" in lines[0]
    assert lines[1].split() == [
        "trial",
        "state",
        "agent",
        "steps",
        "eval",
        "train",
        "eval",
        "video_hard",
        "attempt",
    ]
    assert lines[2].split() == ["sac-x-s0", "DONE", "100/100", "812", "301", "1"]
    assert lines[3].split() == ["sgqn-x-s0", "PENDING", "-", "-", "-", "-"]


def test_trials_get_the_drivers_environment_wherever_they_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a Ray cluster a trial's worker has the environment of `ray start` on its node, not the driver's
    # (tests/test_sweep_ray_head.py): the driver's PYTHONPATH and sgqn's variables travel in its config.
    from sgqn.app.sweeps.runner import forwarded_env, trial_config
    from sgqn.app.sweeps.trial import trial_env, write_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["callbacks", "/abs/lib"]))
    monkeypatch.setenv("SGQN_DEBUG", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret")  # Tune writes a trial's config to disk
    forwarded = forwarded_env()
    assert forwarded["PYTHONPATH"] == os.pathsep.join([os.path.join(os.getcwd(), "callbacks"), "/abs/lib"])
    assert forwarded["SGQN_DEBUG"] == "1" and "MLFLOW_TRACKING_TOKEN" not in forwarded
    spec = load_sweep(sweep_file(tmp_path))
    config = trial_config(spec, spec.trials()[0], tmp_path / "x", "parent", "sqlite:////x.db", 1)
    assert config["env"] == forwarded
    monkeypatch.delenv("PYTHONPATH")  # the worker's own environment
    env = trial_env(1, "sqlite:////x.db", forwarded | {"OMP_NUM_THREADS": "4"})
    assert env["PYTHONPATH"] == forwarded["PYTHONPATH"] and env["OMP_NUM_THREADS"] == "1"
    write_command(tmp_path, ["sgqn", "fit"], env, tuple(forwarded))
    line = (tmp_path / "command.sh").read_text().splitlines()[2]
    assert line.startswith(f"PYTHONPATH={forwarded['PYTHONPATH']} SGQN_DEBUG=1 "), line
    assert line.endswith(" MLFLOW_TRACKING_URI=sqlite:////x.db sgqn fit"), line


def test_ray_connection_errors_and_the_local_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from sgqn.app.sweeps import runner

    # Ray wraps why it could not connect (a head's token refused) in a traceback's text: its last line
    try:
        try:
            raise RuntimeError(
                "Last connection error: Traceback (most recent call last):\n  File x\nray.Auth: no token"
            )
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
    except ConnectionError as err:
        assert runner._root_cause(err) == ": ray.Auth: no token"
    assert runner._root_cause(ConnectionError("x")) == ""

    # without --address, a new Ray on this machine, even where RAY_ADDRESS names a cluster (Ray would join
    # it and refuse num_cpus)
    class Stop(Exception):
        pass

    def init(**kwargs: object) -> None:
        raise Stop(kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setattr(runner, "preflight", lambda *args: None)
    monkeypatch.setattr(runner, "open_sweep", lambda *args: ("parent", False))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    spec = load_sweep(sweep_file(tmp_path))
    with pytest.raises(Stop) as stopped:
        runner.run_sweep(spec, num_cpus=2)
    assert stopped.value.args[0]["address"] == "local" and stopped.value.args[0]["num_cpus"] == 2
    assert "RAY_ADDRESS is set (10.0.0.1:6379) but --address is not" in capsys.readouterr().err
    with pytest.raises(Stop) as stopped:
        runner.run_sweep(spec, address="auto")
    assert stopped.value.args[0]["address"] == "auto"


def _env() -> dict[str, str]:
    # In-process fits of earlier tests leave MLFLOW_TRACKING_URI set (mlflow.set_tracking_uri exports it).
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}


def _sweep(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = _env()
    command = [
        sys.executable,
        "-m",
        "sgqn",
        "sweep",
        "-c",
        str(folder / "tiny_sweep.yaml"),
        "--num-cpus",
        "2",
    ]
    command += ["--poll-seconds", "1", *extra]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # 2 minutes; tests/test_sweep_ray_head.py (slow) does the same on a Ray head
def test_tiny_sweep_end_to_end_with_a_killed_worker(tmp_path: Path) -> None:
    sweep_file(tmp_path)
    marker = tmp_path / "killed"
    killer = [
        "--trainer.callbacks+=sweep_killer.KillWorkerOnce",
        "--trainer.callbacks.init_args.agent_steps=90",
        f"--trainer.callbacks.init_args.marker={marker}",
    ]
    done = _sweep(tmp_path, *killer)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 trials finished, 0 failed" in done.stdout
    killed = marker.read_text()
    runs_dir = tmp_path / "sweeps" / "tiny" / "runs"
    # the killed trial ran twice, the second time from its step-60 checkpoint, and finished
    assert sorted(p.name for p in (runs_dir / killed).glob("attempt-*")) == ["attempt-1", "attempt-2"]
    second = (runs_dir / killed / "fit.log").read_text().split("=== attempt 2")[1]
    assert "sgqn: resuming" in second and "last.ckpt" in second
    for other in {p.name for p in runs_dir.iterdir()} - {killed}:
        assert [p.name for p in (runs_dir / other).glob("attempt-*")] == ["attempt-1"]
    assert (runs_dir / killed / "command.sh").read_text().count("sgqn fit -c") == 1

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny_sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == KIND_SWEEP]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5  # the resume reopened its run
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials_finished"] == 4
    assert len(expected_trials(client, parent)) == 4
    by_trial = {r.data.tags[TRIAL_TAG]: r for r in children}
    assert set(by_trial) == {p.name for p in runs_dir.iterdir()}
    for name, run in by_trial.items():
        assert run.info.status == "FINISHED" and run.data.tags[PARENT_TAG] == parent.info.run_id
        assert run.data.tags.get("resumes", "0") == ("1" if name == killed else "0")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/train/return_mean")]
        assert steps == [60, 120], (name, steps)  # each evaluation logged once, the resumed one too
    assert by_trial[killed].data.tags.get("resumes") == "1"
    assert f"(MLflow run {by_trial[killed].info.run_id})" in second  # the same run, reopened

    # The same command again: every trial is finished, none is re-run, the parent is closed again.
    again = _sweep(tmp_path, *killer)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(4 already finished)" in again.stdout
    assert sum(1 for _ in runs_dir.glob("*/attempt-*")) == 5
    assert len(client.search_runs([experiment.experiment_id])) == 5

    # The paper's table from the sweep: 2 methods x 1 task, 2 seeds each, logged to the parent run.
    report = subprocess.run(
        [sys.executable, "-m", "sgqn", "report", "--sweep", "tiny", "--out", str(tmp_path / "report")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "report" / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| cartpole_balance"))
    finals = {
        name: client.get_metric_history(run.info.run_id, "eval/train/return_mean")[-1].value
        for name, run in by_trial.items()
    }
    for cell, algorithm in zip(row.split("|")[2:4], ["sac", "sgqn"], strict=True):
        values = [v for k, v in finals.items() if k.startswith(algorithm)]
        assert cell.strip().startswith(f"{sum(values) / 2:.0f} ±"), (cell, values)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/table.md" in logged and "report/curves_cartpole_balance.png" in logged
    assert json.loads((runs_dir / killed / "done.json").read_text())["agent_steps"] == 120


def test_a_bad_trial_option_fails_before_ray_or_mlflow(tmp_path: Path) -> None:
    path = sweep_file(tmp_path)
    path.write_text(path.read_text().replace("eval.modes: [train]", "eval.modes: [train, video_medium]"))
    done = _sweep(tmp_path)
    assert done.returncode == 2
    line = done.stderr.splitlines()[0]
    assert line.startswith(
        f"sgqn: error: {path}: trial sac-cartpole_balance-s0: --eval.modes: unknown mode 'video_medium'"
    ), done.stderr
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()
    dry = _sweep(tmp_path, "--dry-run")  # the very same check, the very same line
    assert dry.returncode == 2 and dry.stdout == "" and dry.stderr.splitlines()[0] == line
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
