"""Shared fixtures: headless GL is selected before any test imports dm_control."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sgqn.envs import select_gl_backend

select_gl_backend()  # MUJOCO_GL before any test module imports mujoco or dm_control

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dmcgb_root() -> Path:
    """The real DMC-GB data (../shared/dmcgb or $SGQN_DMCGB_ROOT); tests skip when it is absent."""
    root = Path(os.environ.get("SGQN_DMCGB_ROOT", REPO.parent / "shared" / "dmcgb"))
    if not (root / "color_hard.pt").exists():
        pytest.skip(f"DMC-GB data not found at {root}")
    return root


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder for one test's runs: MLflow's default artifact root (./mlruns) lands in it too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SGQN_DEBUG", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def same_random_numbers() -> Iterator[None]:
    """Compiled code draws from the eager RNG stream (inductor's `fallback_random`), so a compiled update
    and an eager one see the same random numbers and can be compared."""
    import torch._inductor.config as inductor

    # Code compiled by an earlier test in this process (without `fallback_random`) would be reused.
    torch._dynamo.reset()
    with inductor.patch(fallback_random=True):
        yield
