"""`sgqn report`: the paper's results table (mean ± std over seeds of the final evaluation returns, per
task, method and test mode), the same tables of the saliency scores on the task's bodies (precision,
TID) and learning curves, read from the MLflow runs of a sweep or an experiment.

- `collect`: the trials and their runs, as plain dataclasses (which are complete, which missing and why);
- `table`: the cells and the markdown / CSV / LaTeX writers;
- `figures`: one PNG of curves per task;
- `cli`: the command (`report_parser`, `report_main`).
"""

from sgqn.app.report.collect import Collection, Curve, Trial, collect_experiment, collect_sweep
from sgqn.app.report.table import Cell, Table, build_table, build_tables

__all__ = [
    "Cell",
    "Collection",
    "Curve",
    "Table",
    "Trial",
    "build_table",
    "build_tables",
    "collect_experiment",
    "collect_sweep",
]
