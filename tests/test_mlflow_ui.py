"""The link `sgqn fit` prints opens the run in MLflow's model-training view, checked in a real headless
browser with a fresh profile (MLflow 3's UI opens in its GenAI view otherwise: traces, judges, prompts).
Slow; skipped where no Chromium is installed (`apt-get install chromium`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgqn.app.console import MLFLOW_UI, run_url
from sgqn.app.tracking import SGQNMLFlowLogger

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[str]:
    """`mlflow ui` on a store holding one training run; yields the run's link as `fit` prints it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = SGQNMLFlowLogger(experiment_name="tiny", tracking_uri=uri, run_name="a-training-run")
    logger.log_metrics({"eval/train/return_mean": 1.0}, step=0)
    logger.experiment.set_terminated(logger.run_id)
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # the server answers within seconds
            try:
                urllib.request.urlopen(address, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        link = run_url(uri, str(logger.experiment_id), str(logger.run_id)).replace(MLFLOW_UI, address)
        yield link
    finally:
        server.terminate()
        server.wait(timeout=30)


def _page(url: str, profile: Path) -> str:
    """The page's DOM once its scripts ran, in a browser that never saw the UI before."""
    command = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--virtual-time-budget=25000", "--dump-dom", url]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")
def test_the_printed_link_opens_the_run_in_the_model_training_view(ui: str, tmp_path: Path) -> None:
    link = ui
    page = _page(link, tmp_path / "fresh")
    assert "a-training-run" in page and "Model metrics" in page  # the run's page
    assert "Model registry" in page and ">Runs<" in page  # the model-training sidebar
    assert "Judges" not in page and "Evaluation runs" not in page  # not GenAI's
    # the same run without the view in the link: GenAI's sidebar, whatever the experiment's kind tag says
    bare = _page(link.split("?")[0], tmp_path / "fresh-too")
    assert "a-training-run" in bare and "Judges" in bare and "Model registry" not in bare
