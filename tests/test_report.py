"""`sgqn report` on a fake sweep in a temporary MLflow store: cells, marks, missing list, writers, artifacts.

The sweep: sac and sgqn × cartpole_swingup and walker_walk × seeds 0-2, 4000 agent steps, evaluations
every 1000 steps that ramp linearly to the final returns below. sac-walker_walk-s1 FAILED at step 2000,
sac-walker_walk-s2 has no run; two trials were re-launched. An svea run outside the sweep shares the
experiment. The runs log saliency scores that ramp to the final ones of PRECISION, except
sac-walker_walk-s0 and the svea run (as runs from before them) and sgqn-walker_walk-s2 (not at its final
evaluation).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from PIL import Image

from sgqn.app.errors import ConfigError
from sgqn.app.report.cli import report_main, report_parser
from sgqn.app.report.collect import (
    Collection,
    Curve,
    Trial,
    collect_experiment,
    collect_sweep,
    method_labels,
)
from sgqn.app.report.figures import mean_curve
from sgqn.app.report.table import (
    SALIENCY_TABLES,
    build_table,
    build_tables,
    csv_rows,
    latex,
    markdown,
    markdown_tables,
    write_tables,
)
from sgqn.app.sweeps.tracking import child_tags, create_parent_run
from sgqn.envs.names import mode_order

EXPERIMENT, SWEEP, STEPS = "study", "grid", 4000
SCORES = ("saliency_precision", "saliency_tid", "predicted_precision", "predicted_tid")
TASKS = ("cartpole_swingup", "walker_walk")
# (algorithm, task) → per seed (train, video_hard) final returns of the complete runs; None: not complete.
FINALS: dict[tuple[str, str], list[tuple[float, float] | None]] = {
    ("sac", "cartpole_swingup"): [(700, 300), (720, 330), (740, 360)],
    ("sac", "walker_walk"): [(500, 100), None, None],
    ("sgqn", "cartpole_swingup"): [(810, 600), (830, 640), (850, 680)],
    ("sgqn", "walker_walk"): [(900, 400), (910, 450), (920, 500)],
}
# (algorithm, task) → per seed (train, video_hard) final saliency precision; None: no saliency scores logged.
# TID is half the precision; sgqn's attribution predictor scores 0.1 below its critic, sac has none.
PRECISION: dict[tuple[str, str], list[tuple[float, float] | None]] = {
    ("sac", "cartpole_swingup"): [(0.4, 0.2), (0.5, 0.3), (0.6, 0.4)],
    ("sac", "walker_walk"): [None, None, None],
    ("sgqn", "cartpole_swingup"): [(0.7, 0.6), (0.8, 0.65), (0.9, 0.7)],
    ("sgqn", "walker_walk"): [(0.75, 0.5), (0.85, 0.6), (0.95, 0.7)],  # s2's stop before its final evaluation
}


def scores(algorithm: str, precision: tuple[float, float] | None) -> dict[str, tuple[float, float]]:
    """The final saliency scores (train, video_hard) a run logs, as `sgqn fit` names them."""
    if precision is None:
        return {}
    train, video = precision
    logged = {"saliency_precision": (train, video), "saliency_tid": (train / 2, video / 2)}
    if algorithm == "sgqn":
        logged |= {
            "predicted_precision": (train - 0.1, video - 0.1),
            "predicted_tid": (train / 2 - 0.1, video / 2 - 0.1),
        }
    return logged


class Store:
    def __init__(self, root: Path) -> None:
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self.client.create_experiment(
            EXPERIMENT, artifact_location=str(root / "artifacts")
        )
        self.clock = 1_700_000_000_000

    def run(
        self,
        algorithm: str,
        task: str,
        seed: int,
        final: tuple[float, float],
        until: int = STEPS,
        status: str = "FINISHED",
        tags: dict[str, str] | None = None,
        scores: dict[str, tuple[float, float]] | None = None,
        scores_until: int = STEPS,
    ) -> str:
        """A training run whose returns ramp linearly to `final` at STEPS, logged up to step `until`; its
        saliency `scores` (name → final train, video_hard values) ramp likewise, up to `scores_until`."""
        self.clock += 60_000  # start times order the re-launches
        all_tags = {"algorithm": algorithm, "task": task, "seed": str(seed), **(tags or {})}
        run = self.client.create_run(self.experiment_id, start_time=self.clock, tags=all_tags)
        run_id = run.info.run_id
        self.client.log_param(run_id, "num_agent_steps", STEPS)
        metrics = [
            Metric(f"eval/{mode}/return_mean", value * step / STEPS, self.clock + step, step)
            for step in range(0, until + 1, 1000)
            for mode, value in zip(("train", "video_hard"), final, strict=True)
        ]
        metrics += [
            Metric(f"eval/{mode}/{name}", value * step / STEPS, self.clock + step, step)
            for step in range(0, min(until, scores_until) + 1, 1000)
            for name, values in (scores or {}).items()
            for mode, value in zip(("train", "video_hard"), values, strict=True)
        ]
        self.client.log_batch(run_id, metrics=metrics)
        if status != "RUNNING":
            self.client.set_terminated(run_id, status)
        return run_id


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    store = Store(root)  # creates the database before anything else opens it
    trials = [
        {
            "trial": f"{a}-{t}-s{s}",
            "algorithm": a,
            "task": t,
            "seed": s,
            "num_agent_steps": STEPS,
            "overrides": {
                "model.algorithm": a,
                "data.task": t,
                "data.seed": str(s),
                "data.num_agent_steps": "4000",
            },
        }
        for a in ("sac", "sgqn")
        for t in TASKS
        for s in range(3)
    ]
    parent = create_parent_run(store.client, EXPERIMENT, SWEEP, trials, "name: grid\n")

    def child(algorithm: str, task: str, seed: int, final: tuple[float, float], **kwargs: Any) -> str:
        tags = child_tags(parent, SWEEP, f"{algorithm}-{task}-s{seed}")
        return store.run(algorithm, task, seed, final, tags=tags, **kwargs)

    ids: dict[str, str] = {}
    # an older complete run: the newer one wins
    child("sac", "cartpole_swingup", 0, (111, 111), scores=scores("sac", (0.99, 0.99)))
    for (algorithm, task), finals in FINALS.items():
        for seed, final in enumerate(finals):
            if final is not None:
                logged = scores(algorithm, PRECISION[(algorithm, task)][seed])
                until = STEPS - 1000 if (algorithm, task, seed) == ("sgqn", "walker_walk", 2) else STEPS
                ids[f"{algorithm}-{task}-s{seed}"] = child(
                    algorithm, task, seed, final, scores=logged, scores_until=until
                )
    ids["sac-walker_walk-s1"] = child("sac", "walker_walk", 1, (480, 90), until=2000, status="FAILED")
    # a re-launch of a complete trial
    child("sgqn", "walker_walk", 1, (1, 1), until=1000, status="KILLED", scores=scores("sgqn", (0.01, 0.01)))
    store.run("svea", "cartpole_swingup", 0, (600, 500))  # not part of the sweep
    return {"root": root, "uri": store.uri, "client": store.client, "parent": parent, "ids": ids}


def test_collect_sweep_decides_complete_and_missing(sweep: dict[str, Any]) -> None:
    collection = collect_sweep(sweep["client"], SWEEP)
    assert collection.parent_run_id == sweep["parent"] and collection.experiment == EXPERIMENT
    assert len(collection.trials) == 12 and collection.tasks == list(TASKS)
    assert collection.methods == ["sac", "sgqn"] and collection.modes == ["train", "video_hard"]
    assert collection.missing_lines() == [
        "sac-walker_walk-s1: FAILED at step 2000/4000",
        "sac-walker_walk-s2: no run",
    ]
    by_name = {t.name: t for t in collection.trials}
    newest = by_name["sac-cartpole_swingup-s0"]  # two complete runs: the newest
    assert newest.run_id == sweep["ids"]["sac-cartpole_swingup-s0"] and newest.runs == 2
    assert newest.finals == {"train": 700.0, "video_hard": 300.0}
    relaunched = by_name["sgqn-walker_walk-s1"]  # newest run KILLED: the older complete one
    assert relaunched.run_id == sweep["ids"]["sgqn-walker_walk-s1"] and relaunched.runs == 2
    assert relaunched.curves["train"] == Curve([0, 1000, 2000, 3000, 4000], [0.0, 227.5, 455.0, 682.5, 910.0])
    failed = by_name["sac-walker_walk-s1"]
    assert (failed.status, failed.last_step, failed.finals["train"]) == ("FAILED", 2000, 240.0)
    # Saliency scores at each mode's final evaluation, from the run chosen for the returns.
    assert newest.scores == {
        "saliency_precision": {"train": 0.4, "video_hard": 0.2},
        "saliency_tid": {"train": 0.2, "video_hard": 0.1},
    }
    assert relaunched.scores["predicted_precision"] == {"train": pytest.approx(0.75), "video_hard": 0.5}
    assert by_name["sac-walker_walk-s0"].scores == {}  # logged none, as a run from before them
    assert by_name["sgqn-walker_walk-s2"].scores == {}  # logged up to step 3000: none at its final one
    assert failed.scores == {} and by_name["sac-walker_walk-s2"].scores == {}
    for trial in collection.trials:  # the value at the last step of the history = MLflow's latest value
        if trial.run_id is not None:
            latest = sweep["client"].get_run(trial.run_id).data.metrics
            assert trial.finals == {m: latest[f"eval/{m}/return_mean"] for m in trial.finals}
    # by parent run id as well as by name
    assert [t.run_id for t in collect_sweep(sweep["client"], sweep["parent"]).trials] == [
        t.run_id for t in collection.trials
    ]


def test_table_cells_marks_and_average(sweep: dict[str, Any]) -> None:
    table = build_table(collect_sweep(sweep["client"], SWEEP))
    cell = table.cells[("cartpole_swingup", "sac", "train")]
    assert (cell.mean, cell.std, cell.seeds, cell.values) == (
        720.0,
        20.0,
        ["0", "1", "2"],
        [700.0, 720.0, 740.0],
    )
    text = {(task, method, mode): table.cell_text(task, method, mode) for task, method, mode in table.cells}
    assert text == {
        ("cartpole_swingup", "sac", "train"): "720 ± 20",
        ("cartpole_swingup", "sac", "video_hard"): "330 ± 30",
        ("cartpole_swingup", "sgqn", "train"): "830 ± 20",
        ("cartpole_swingup", "sgqn", "video_hard"): "640 ± 40",
        ("walker_walk", "sac", "train"): "500 (1/3)",  # one seed: the mean alone
        ("walker_walk", "sac", "video_hard"): "100 (1/3)",
        ("walker_walk", "sgqn", "train"): "910 ± 10",
        ("walker_walk", "sgqn", "video_hard"): "450 ± 50",
    }
    averages = {key: average.text() for key, average in table.averages.items()}
    assert averages == {
        ("sac", "train"): "720 (1/2 tasks)",  # walker_walk lacks seeds: left out of sac's average
        ("sac", "video_hard"): "330 (1/2 tasks)",
        ("sgqn", "train"): "870",
        ("sgqn", "video_hard"): "545",
    }
    population = build_table(collect_sweep(sweep["client"], SWEEP), ddof=0)
    assert population.cells[("walker_walk", "sgqn", "train")].std == pytest.approx((200 / 3) ** 0.5)

    text_md = markdown(table)
    assert "| task | sac train | sac video_hard | sgqn train | sgqn video_hard |" in text_md
    assert "| cartpole_swingup | 720 ± 20 | 330 ± 30 | 830 ± 20 | 640 ± 40 |" in text_md
    assert "| walker_walk | 500 (1/3) | 100 (1/3) | 910 ± 10 | 450 ± 50 |" in text_md
    assert "| **average** | 720 (1/2 tasks) | 330 (1/2 tasks) | 870 | 545 |" in text_md
    assert "only over the tasks where the method has all its seeds complete" in text_md
    assert "Missing or incomplete trials (2 of 12)" in text_md
    assert "- sac-walker_walk-s1: FAILED at step 2000/4000\n- sac-walker_walk-s2: no run\n" in text_md


def test_csv_and_latex(sweep: dict[str, Any]) -> None:
    table = build_table(collect_sweep(sweep["client"], SWEEP))
    rows = {(r["task"], r["method"], r["mode"]): r for r in csv_rows(table)}
    assert len(rows) == 8
    assert rows[("walker_walk", "sgqn", "video_hard")] == {
        "metric": "return",
        "task": "walker_walk",
        "method": "sgqn",
        "mode": "video_hard",
        "mean": "450.0",
        "std": "50.0",
        "n_seeds": "3",
        "n_expected": "3",
        "seeds": "0;1;2",
        "values": "400.0;450.0;500.0",
    }
    short = rows[("walker_walk", "sac", "train")]
    assert (short["mean"], short["std"], short["n_seeds"], short["n_expected"]) == ("500.0", "", "1", "3")

    tex = latex(table)
    assert r"\begin{tabular}{lcccc}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"& \multicolumn{2}{c}{sac} & \multicolumn{2}{c}{sgqn} \\" in tex
    assert r"cartpole\_swingup & $720 \pm 20$ & $330 \pm 30$ & $830 \pm 20$ & $640 \pm 40$ \\" in tex
    assert r"walker\_walk & $500$ (1/3) & $100$ (1/3) & $910 \pm 10$ & $450 \pm 50$ \\" in tex
    assert r"average & $720$ (1/2 tasks) & $330$ (1/2 tasks) & $870$ & $545$ \\" in tex
    body = tex[tex.index(r"\toprule") : tex.index(r"\bottomrule")]
    for line in body.splitlines():
        if line.endswith(r"\\"):  # every row has 1 + 4 columns
            spans = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", line)]
            assert line.count("&") + 1 - len(spans) + sum(spans) == 5, line


def test_saliency_tables_by_hand_with_missing_scores(sweep: dict[str, Any]) -> None:
    tables = build_tables(collect_sweep(sweep["client"], SWEEP))
    assert [t.metric for t in tables] == ["return", *SCORES]
    assert [t.title for t in tables[1:]] == [
        "Saliency precision: sweep grid",
        "Saliency TID: sweep grid",
        "Predicted precision: sweep grid",
        "Predicted TID: sweep grid",
    ]
    text = {table.metric: {key: table.cell_text(*key) for key in table.cells} for table in tables[1:]}
    # PRECISION by hand: mean ± sample std over the complete seeds that logged the score at their final
    # evaluation; sac-walker_walk-s0 logged none (– (0/3), not 0), sgqn-walker_walk-s2 none at the end.
    assert text["saliency_precision"] == {
        ("cartpole_swingup", "sac", "train"): "0.50 ± 0.10",
        ("cartpole_swingup", "sac", "video_hard"): "0.30 ± 0.10",
        ("cartpole_swingup", "sgqn", "train"): "0.80 ± 0.10",
        ("cartpole_swingup", "sgqn", "video_hard"): "0.65 ± 0.05",
        ("walker_walk", "sac", "train"): "– (0/3)",
        ("walker_walk", "sac", "video_hard"): "– (0/3)",
        ("walker_walk", "sgqn", "train"): "0.80 ± 0.07 (2/3)",  # 0.75, 0.85
        ("walker_walk", "sgqn", "video_hard"): "0.55 ± 0.07 (2/3)",  # 0.5, 0.6
    }
    assert text["saliency_tid"][("cartpole_swingup", "sac", "train")] == "0.25 ± 0.05"
    tid = tables[2].cells[("walker_walk", "sgqn", "video_hard")]  # 0.25, 0.3
    assert (tid.mean, tid.std, tid.n) == (pytest.approx(0.275), pytest.approx(0.05 / 2**0.5), 2)
    assert text["predicted_precision"][("cartpole_swingup", "sgqn", "train")] == "0.70 ± 0.10"
    assert text["predicted_tid"][("cartpole_swingup", "sgqn", "train")] == "0.30 ± 0.05"  # .25 .3 .35
    for metric in ("predicted_precision", "predicted_tid"):  # sac has no attribution predictor
        assert text[metric][("cartpole_swingup", "sac", "train")] == "– (0/3)"
    precision = tables[1]
    cell = precision.cells[("walker_walk", "sgqn", "train")]
    assert (
        cell.seeds == ["0", "1"] and cell.values == [0.75, 0.85] and cell.std == pytest.approx(0.05 * 2**0.5)
    )
    empty = precision.cells[("walker_walk", "sac", "train")]
    assert (empty.mean, empty.std, empty.n, empty.expected) == (None, None, 0, 3)
    averages = {key: average.text() for key, average in precision.averages.items()}
    assert averages == {  # only the tasks where every expected seed has the score
        ("sac", "train"): "0.50 (1/2 tasks)",
        ("sac", "video_hard"): "0.30 (1/2 tasks)",
        ("sgqn", "train"): "0.80 (1/2 tasks)",
        ("sgqn", "video_hard"): "0.65 (1/2 tasks)",
    }

    text_md = markdown_tables(tables)
    assert text_md.index("## Results: sweep grid") < text_md.index("## Saliency precision: sweep grid")
    assert "| walker_walk | – (0/3) | – (0/3) | 0.80 ± 0.07 (2/3) | 0.55 ± 0.07 (2/3) |" in text_md
    assert (
        "| **average** | 0.50 (1/2 tasks) | 0.30 (1/2 tasks) | 0.80 (1/2 tasks) | 0.65 (1/2 tasks) |"
        in text_md
    )
    assert "– (0/n): none did (a run from before these scores" in text_md and "missing, not 0." in text_md
    assert text_md.count("Missing or incomplete trials (2 of 12)") == 1 and text_md.endswith("no run\n")
    rows = {(r["metric"], r["task"], r["method"], r["mode"]): r for r in csv_rows(precision)}
    missing = rows[("saliency_precision", "walker_walk", "sac", "train")]
    assert (missing["mean"], missing["std"], missing["n_seeds"], missing["values"]) == ("", "", "0", "")
    assert rows[("saliency_precision", "walker_walk", "sgqn", "train")]["values"] == "0.75;0.85"
    tex = latex(precision, missing=False)
    assert (
        r"cartpole\_swingup & $0.50 \pm 0.10$ & $0.30 \pm 0.10$ & $0.80 \pm 0.10$ & $0.65 \pm 0.05$ \\" in tex
    )
    assert r"walker\_walk & -- (0/3) & -- (0/3) & $0.80 \pm 0.07$ (2/3) & $0.55 \pm 0.07$ (2/3) \\" in tex
    assert "% missing" not in tex and "% missing" in latex(precision)

    # An experiment: the svea run outside the sweep logged no scores.
    experiment = build_tables(collect_experiment(sweep["client"], EXPERIMENT))
    assert experiment[1].cell_text("cartpole_swingup", "svea", "train") == "– (0/1)"
    assert experiment[1].cell_text("cartpole_swingup", "sac", "train") == "0.50 ± 0.10"


def test_runs_without_scores_give_missing_saliency_cells(tmp_path: Path) -> None:
    """Runs from before the scores: the saliency tables are written with every cell missing, the
    predictor's are left out, and nothing reads 0."""
    trials = [
        Trial(f"sac-t-s{s}", "sac", "t", str(s), "sac", 10, f"r{s}", None, "FINISHED", 10, {"train": 5.0})
        for s in range(2)
    ]
    collection = Collection("experiment", "old", "old", "sqlite:///x.db", trials)
    tables = build_tables(collection)
    assert [t.metric for t in tables] == ["return", *SALIENCY_TABLES]
    assert tables[0].cell_text("t", "sac", "train") == "5 ± 0"
    assert [t.cell_text("t", "sac", "train") for t in tables[1:]] == ["– (0/2)", "– (0/2)"]
    assert [t.averages[("sac", "train")].text() for t in tables[1:]] == ["– (0/1 tasks)"] * 2
    files = write_tables(tables, tmp_path)
    assert [p.name for p in files] == ["table.md", "table.csv", "table.tex"]
    with open(tmp_path / "table.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["metric"], r["mean"]) for r in rows] == [
        ("return", "5.0"),
        ("saliency_precision", ""),
        ("saliency_tid", ""),
    ]
    assert "0.00" not in (tmp_path / "table.md").read_text() + (tmp_path / "table.tex").read_text()


def test_report_command_writes_logs_and_prints(
    sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = report_main(["--sweep", SWEEP, "--tracking-uri", sweep["uri"], "--out", str(tmp_path / "out")])
    names = sorted(p.name for p in files)
    assert names == [
        "curves_cartpole_swingup.png",
        "curves_walker_walk.png",
        "table.csv",
        "table.md",
        "table.tex",
    ]
    out = capsys.readouterr().out
    assert "| cartpole_swingup | 720 ± 20 | 330 ± 30 | 830 ± 20 | 640 ± 40 |" in out
    assert "- sac-walker_walk-s2: no run" in out and str(tmp_path / "out" / "table.tex") in out
    assert f"logged them to the sweep's parent run {sweep['parent']} under report/" in out
    for path in files:
        if path.suffix == ".png":
            assert path.stat().st_size > 10_000
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width > 400 and image.height > 200
                assert len(image.convert("RGB").getcolors(1 << 20) or []) > 20  # drawn, not blank
    assert "## Saliency precision: sweep grid" in out and "## Predicted TID: sweep grid" in out
    assert "| cartpole_swingup | 0.50 ± 0.10 | 0.30 ± 0.10 | 0.80 ± 0.10 | 0.65 ± 0.05 |" in out
    assert out.count("Missing or incomplete trials") == 1  # once, under the last table
    with open(tmp_path / "out" / "table.csv") as file:
        metrics = [row["metric"] for row in csv.DictReader(file)]  # 8 cells per table
    assert metrics == [m for m in ("return", *SCORES) for _ in range(8)]
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 5 and tex.count("% missing: sac-walker_walk-s2: no run") == 1
    logged = sorted(a.path for a in sweep["client"].list_artifacts(sweep["parent"], "report"))
    assert logged == [f"report/{name}" for name in names]


def test_report_of_an_experiment(
    sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    collection = collect_experiment(sweep["client"], EXPERIMENT)
    assert collection.parent_run_id is None and collection.methods == ["sac", "svea", "sgqn"]
    # Seeds expected are those with a run: sac-walker_walk-s2 is unknown here, its failed s1 is not.
    assert collection.missing_lines() == ["sac-walker_walk-s1: FAILED at step 2000/4000"]
    table = build_table(collection)
    assert table.cell_text("walker_walk", "sac", "train") == "500 (1/2)"
    assert table.cell_text("cartpole_swingup", "svea", "train") == "600"
    assert table.cell_text("walker_walk", "svea", "train") == ""  # svea never ran there
    assert table.cells[("cartpole_swingup", "sac", "train")].values == [700.0, 720.0, 740.0]
    assert table.averages[("svea", "video_hard")].text() == "500"

    files = report_main(
        [
            "--experiment",
            EXPERIMENT,
            "--tracking-uri",
            sweep["uri"],
            "--out",
            str(tmp_path),
            "--modes",
            "train",
        ]
    )
    assert {p.name for p in files} >= {"table.md", "curves_cartpole_swingup.png"}
    assert "no sweep parent run to attach them to" in capsys.readouterr().out


def test_errors_are_one_line_config_errors(sweep: dict[str, Any], tmp_path: Path) -> None:
    uri = ["--tracking-uri", sweep["uri"], "--out", str(tmp_path), "--no-log"]
    with pytest.raises(ConfigError, match=r"--sweep nosuch: no sweep with id or name 'nosuch'"):
        report_main(["--sweep", "nosuch", *uri])
    with pytest.raises(ConfigError, match=r"no MLflow experiment of that name .*did you mean 'study'"):
        report_main(["--experiment", "studdy", *uri])
    sweep["client"].create_experiment("empty", artifact_location=str(tmp_path / "artifacts"))
    with pytest.raises(ConfigError, match=r"'empty' has no training runs"):
        report_main(["--experiment", "empty", *uri])
    with pytest.raises(ConfigError, match=r"--modes: no complete trial was evaluated in video_easy"):
        report_main(["--sweep", SWEEP, "--modes", "video_easy", *uri])
    assert not list(tmp_path.glob("table.*"))  # nothing written before the error


def test_help_shows_every_flag_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        report_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--sweep", "--experiment", "--tracking-uri", "--modes", "--out", "--ddof", "--no-log"):
        assert flag in text
    assert "(default: 1)" in text and "(default: False)" in text
    with pytest.raises(SystemExit):
        report_parser().parse_args(["--sweep", "a", "--experiment", "b"])  # one source only


def test_mean_curve_uses_shared_steps_and_method_labels() -> None:
    steps, means, stds = mean_curve([Curve([0, 10, 20], [0.0, 2.0, 4.0]), Curve([0, 10], [2.0, 4.0])])
    assert (steps, means) == ([0, 10], [1.0, 3.0]) and stds == pytest.approx([2**0.5, 2**0.5])
    assert mean_curve([Curve([0, 10], [1.0, 2.0])])[2] is None  # one seed: no band
    assert sorted(["video_hard", "x", "distracting_cs@0.1", "train"], key=mode_order) == [
        "train",
        "video_hard",
        "distracting_cs@0.1",
        "x",
    ]  # the paper's column order, then any other mode
    records = [
        {
            "algorithm": "sgqn",
            "task": "t",
            "seed": s,
            "overrides": {"data.seed": str(s), "model.sgqn.quantile": q},
        }
        for q in ("0.9", "0.95")
        for s in (0, 1)
    ] + [{"algorithm": "sac", "task": "t", "seed": 0, "overrides": {"data.seed": "0"}}]
    assert method_labels(records) == ["sgqn quantile=0.9"] * 2 + ["sgqn quantile=0.95"] * 2 + ["sac"]
