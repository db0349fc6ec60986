"""Execute the notebooks headless against a tiny MLflow run made here (`nox -s notebooks` runs this).

    python scripts/run_notebooks.py [--keep DIR]

The tiny run is also the one trial of a one-trial sweep (a parent run made here, no Ray), so the sweep
section of inspect_runs is exercised too. Exits non-zero if a cell raises. The executed copies are
written to the work folder, never over the committed notebooks (which are kept without outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("inspect_runs.ipynb", "saliency_explorer.ipynb")
TINY = REPO / "conf" / "tiny.yaml"


def tiny_sweep(work: Path, tracking_uri: str) -> tuple[str, dict[str, str]]:
    """A sweep parent run expecting the tiny run as its only trial: (its run id, the tags of that trial)."""
    from mlflow import MlflowClient

    from sgqn.app.sweeps.tracking import child_tags, create_parent_run

    config = yaml.safe_load(TINY.read_text())
    algorithm, task = config["model"]["algorithm"], config["data"]["task"]
    seed = config["data"].get("seed", 0)  # DMCDataModule's default
    experiment = config["trainer"]["logger"]["init_args"]["experiment_name"]
    trial, steps = f"{algorithm}-{task}-s{seed}", config["data"]["num_agent_steps"]
    record = {"trial": trial, "algorithm": algorithm, "task": task, "seed": seed}
    record |= {"num_agent_steps": steps, "overrides": {}}
    client = MlflowClient(tracking_uri=tracking_uri)  # creates the database, before the fit opens it
    if client.get_experiment_by_name(experiment) is None:  # (exists when --keep reuses a work folder)
        # Artifacts in the work folder (created here, the experiment would default to ./mlruns of the caller).
        client.create_experiment(experiment, artifact_location=str(work / "mlruns"))
    parent = create_parent_run(client, experiment, "tiny", [record], TINY.read_text())
    return parent, child_tags(parent, "tiny", trial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="sgqn-notebooks-"))
    work.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "SGQN_EXPERIMENT": "tiny",
        "SGQN_MODE": "color_hard",
    }
    parent, tags = tiny_sweep(work, env["MLFLOW_TRACKING_URI"])
    fit = [sys.executable, "-m", "sgqn", "fit", "-c", str(TINY)]
    fit += ["--trainer.default_root_dir", str(work / "outputs")]
    fit += ["--trainer.logger.init_args.tags", json.dumps(tags)]
    subprocess.run(fit, check=True, env=env, cwd=work)
    os.environ.update(env | {"SGQN_SWEEP": parent})  # the kernels inherit it
    for name in NOTEBOOKS:
        notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        ).execute()
        nbformat.write(notebook, work / name)
        print(f"executed {name} → {work / name}")


if __name__ == "__main__":
    main()
