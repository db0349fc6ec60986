"""The quick start (conf/quickstart.yaml) learns: the evaluation return rises well above the untrained policy's.

Slow (the full quick start, ~5 minutes on 2 cores): `nox -s tests -- -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from cli_helpers import fit_args
from sgqn.app.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_rises_and_stays_up(store: Path) -> None:
    main(
        fit_args(
            store, "--trainer.enable_progress_bar", "false", config=str(REPO / "conf" / "quickstart.yaml")
        )
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    curve = sorted(
        (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/train/return_mean")
    )
    assert curve[0][0] == 0 and len(curve) == 4  # the untrained policy, then every 1,000 agent steps
    untrained, final = curve[0][1], curve[-1][1]
    # The paper's actor width starts near zero action: the pole hangs (seeds 0-3 measured 0.8-7.8).
    assert untrained <= 20, curve
    # Seed 0 measured (docs/quickstart.md): 0.8 -> 144 -> 171 -> 176 (two threads; 0.8 -> 127 -> 203 -> 215 on
    # another VM's install). Every evaluation after the untrained one stays well above it (the "3x", and an
    # absolute floor that a near-zero start cannot make trivial), and the run ends swinging the pole up.
    assert all(value >= max(3 * untrained, 60) for _, value in curve[1:]), curve
    assert final >= 100, curve
