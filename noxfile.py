"""Developer sessions: `nox -s lint typecheck notebooks tests` (and `bench`).

Every session runs in the project's own `.venv` (made by `scripts/bootstrap.sh`, which installs the
package and its dev tools): no per-session virtualenv, so no extra copies of torch (each was ~2.3 GB and
a reinstall per session). Run nox from that venv (`.venv/bin/nox`) or point `SGQN_PYTHON` at another
interpreter that has `sgqn[dev]` installed.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
REPO = Path(__file__).resolve().parent
# The interpreter nox itself runs in is the project venv's when invoked as `.venv/bin/nox`.
PYTHON = os.environ.get("SGQN_PYTHON") or (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)


def _run(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    session.run(PYTHON, *args, env=env, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The default suite (slow tests deselected; `nox -s tests -- -m slow` runs them)."""
    args = session.posargs or ["-m", "not slow", "-q", "--durations=15"]
    _run(session, "-m", "pytest", *args, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    # Run last (`nox -s lint typecheck notebooks tests`): pytest's summary stays the log's closing line,
    # without nox's success lines after it. Failures are logged at ERROR and still show.
    logging.getLogger("nox").setLevel(logging.WARNING)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    paths = ("src", "tests", "benchmarks", "scripts", "examples", "noxfile.py")
    _run(session, "-m", "ruff", "check", *paths)
    _run(session, "-m", "ruff", "format", "--check", *paths)


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy on src/ (incremental: the cache in .mypy_cache makes re-runs take seconds)."""
    _run(session, "-m", "mypy", "src/sgqn")


NOT_BENCHMARKS = ("gpu_suite.py", "speed_variants.py")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The performance benchmarks (env throughput, test-mode throughput, update step, replay memory)."""
    for script in sorted(os.listdir("benchmarks")):
        # gpu_suite.py runs the others on a GPU machine (benchmarks/gpu_suite.sh), not here;
        # speed_variants.py is the variants' table that update_step.py and gpu_suite.py read.
        if script.endswith(".py") and not script.startswith("_") and script not in NOT_BENCHMARKS:
            _run(session, f"benchmarks/{script}", *session.posargs)


@nox.session(venv_backend="none")
def notebooks(session: nox.Session) -> None:
    """Execute notebooks/ headless against a tiny training run this session makes."""
    _run(session, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3")
    _run(session, "scripts/run_notebooks.py", *session.posargs)
