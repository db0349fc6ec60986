"""Developer sessions: `nox -s tests lint typecheck bench notebooks`.

Each session builds its own virtualenv under .nox/ (reused between runs with `-r`).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


def _install(session: nox.Session) -> None:
    # torch first and pinned: a resolver that sees an unpinned torch first may fetch the CUDA build.
    session.install("torch==2.13.0")
    session.install("-e", ".[dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default suite (slow tests deselected; `nox -s tests -- -m slow` runs them)."""
    _install(session)
    args = session.posargs or ["-m", "not slow", "-q"]
    session.run("pytest", *args, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on src/."""
    _install(session)
    session.run("mypy", "src/sgqn")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The performance benchmarks (env throughput, test-mode throughput, update step, replay memory)."""
    _install(session)
    for script in sorted(os.listdir("benchmarks")):
        if script.endswith(".py") and not script.startswith("_"):
            session.run("python", f"benchmarks/{script}", *session.posargs)


@nox.session(python=PYTHON)
def notebooks(session: nox.Session) -> None:
    """Execute notebooks/ headless against a tiny training run this session makes."""
    _install(session)
    session.run("python", "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3")
    session.run("python", "scripts/run_notebooks.py", *session.posargs)
