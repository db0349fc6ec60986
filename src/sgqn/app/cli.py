"""The `sgqn` command: one subcommand per job, each imported only when it runs, so that `sgqn --help` and a
mistyped subcommand answer at once.

    sgqn fit -c conf/quickstart.yaml            (sgqn.app.fit)
    sgqn evaluate --run <run> --episodes 100    (sgqn.app.evaluate)
    sgqn sweep -c conf/sweep/cpu_mini.yaml      (sgqn.app.sweeps)
    sgqn report --sweep <name>                  (sgqn.app.report)
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from sgqn.app.console import SUBCOMMANDS, fail, help_text, one_line
from sgqn.app.errors import did_you_mean
from sgqn.app.quiet import quiet_dependencies

# MLflow retries a dead tracking server for minutes by default (7 retries, 120 s timeout each).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def set_mlflow_http_defaults() -> None:
    """Short MLflow HTTP retries and timeouts unless the user set them."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _run(words: list[str]) -> None:
    """Import the subcommand's module (only now: `fit` alone imports torch, Lightning and the envs)."""
    quiet_dependencies()  # before those imports, which warn at import time
    if words[0] == "evaluate":
        from sgqn.app.evaluate import evaluate_main

        evaluate_main(words[1:])
    elif words[0] == "sweep":
        from sgqn.app.sweeps.cli import sweep_main

        sweep_main(words[1:])
    elif words[0] == "report":
        from sgqn.app.report.cli import report_main

        report_main(words[1:])
    else:
        from sgqn.app.fit import cli_main

        cli_main(words)


def _exit_status(err: BaseException) -> int | None:
    """2 for a configuration or data error, the run's own status for a diverged run, else None (a bug:
    its traceback is shown)."""
    from sgqn.app.errors import ConfigError
    from sgqn.assets.errors import DataSourceError
    from sgqn.training.guards import TrainingDiverged

    if isinstance(err, ConfigError | DataSourceError):
        return 2
    if isinstance(err, TrainingDiverged):
        return err.exit_code
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """The `sgqn` command. Configuration and data errors end in one line on stderr and exit status 2,
    a diverged training run (`TrainingDiverged`) in exit status 3; ``--debug`` (anywhere) or
    ``SGQN_DEBUG=1`` also prints their traceback."""
    set_mlflow_http_defaults()
    words = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in words or os.environ.get("SGQN_DEBUG", "") not in ("", "0")
    words = [w for w in words if w != "--debug"]
    if not words or words[0] in ("-h", "--help"):
        (sys.stdout if words else sys.stderr).write(help_text())
        if not words:
            fail("a subcommand is required")
        return
    if not words[0].startswith("-") and words[0] not in SUBCOMMANDS:
        hint = did_you_mean(words[0], SUBCOMMANDS)
        fail(f"unknown subcommand {words[0]!r}{hint}; valid: {', '.join(SUBCOMMANDS)}", "see `sgqn --help`")
    try:
        _run(words)
    except Exception as err:
        status = _exit_status(err)
        if status is None:
            raise
        if debug:
            traceback.print_exc()
        if status == 2:
            fail(one_line(err), None if debug else "(--debug or SGQN_DEBUG=1 shows the traceback)")
        # not a usage error: the run started, and stopped with its own status
        sys.stderr.write(f"sgqn: error: {one_line(err)}\n")
        raise SystemExit(status) from None


__all__ = ["main"]
