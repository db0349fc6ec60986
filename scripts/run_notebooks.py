"""Execute the notebooks headless against a tiny MLflow run made here (`nox -s notebooks` runs this).

    python scripts/run_notebooks.py [--keep DIR]

Exits non-zero if a cell raises. The executed copies are written to the work folder, never over the
committed notebooks (which are kept without outputs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("inspect_runs.ipynb", "saliency_explorer.ipynb")


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
    fit = [sys.executable, "-m", "sgqn", "fit", "-c", str(REPO / "conf" / "tiny.yaml")]
    fit += ["--trainer.default_root_dir", str(work / "outputs")]
    subprocess.run(fit, check=True, env=env, cwd=work)
    os.environ.update(env)  # the kernels inherit it
    for name in NOTEBOOKS:
        notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        ).execute()
        nbformat.write(notebook, work / name)
        print(f"executed {name} → {work / name}")


if __name__ == "__main__":
    main()
