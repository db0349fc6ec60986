"""examples/torchrl_loop.py trains with TorchRL's own collector and replay buffer, no Lightning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "torchrl_loop.py"


def test_the_torchrl_loop_trains_sgqn_without_lightning(tmp_path: Path) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "2"}
    args = ["--steps", "40", "--init", "20", "--batch", "8", "--size", "32"]
    probe = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
    probe += "print('lightning' if any(m.startswith('lightning') for m in sys.modules) else 'no lightning')"
    done = subprocess.run(
        [sys.executable, "-c", probe, str(EXAMPLE), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("step 40:") and "loss_attribution" in line for line in lines), lines
    assert any(line.startswith("evaluation return: ") for line in lines), lines
    assert lines[-1] == "no lightning"
    assert len(EXAMPLE.read_text().splitlines()) <= 120
