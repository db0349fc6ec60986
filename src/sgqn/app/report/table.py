"""The results table: task × (method, test mode) cells of mean ± std over seeds, and its writers.

A cell holds each complete seed's final ``eval/<mode>/return_mean``; one built from fewer seeds than the
sweep expected says so (``512 ± 40 (2/3)``). The ``average`` row is the mean over tasks of the per-task
means, over the tasks where the method has all its seeds. Incomplete trials never enter a cell: they are
listed under the table.

The saliency tables (`build_tables`) are built the same way from each complete seed's score at its final
evaluation (`Trial.scores`): the critic's saliency precision and TID, and, when a trial logged them, those
of SGQN's attribution predictor. A seed without the score is left out of the cell as an incomplete one is
(``0.61 (2/3)``; ``– (0/3)``: no seed has it), never counted as 0.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sgqn.app.report.collect import SCORE_METRICS, Collection

AVERAGE = "average"
RETURN = "return"


@dataclass(frozen=True)
class Metric:
    """What a table's cells hold: `name` is ``return`` or a score of `Trial.scores`."""

    name: str
    title: str  # the table's heading, before ``: sweep <name>``
    decimals: int  # 0: integers, as the paper's return tables
    what: str  # each seed's value, for the footnote


METRICS = {
    RETURN: Metric(RETURN, "Results", 0, "final evaluation return"),
    "saliency_precision": Metric(
        "saliency_precision",
        "Saliency precision",
        2,
        "eval/<mode>/saliency_precision at its final evaluation (the share of the critic's salient "
        "pixels, its mask at ρ, that lie on the task's bodies)",
    ),
    "saliency_tid": Metric(
        "saliency_tid",
        "Saliency TID",
        2,
        "eval/<mode>/saliency_tid at its final evaluation (SimGRL's TID: √(precision · recall) of the "
        "critic's salient pixels on the task's bodies)",
    ),
    "predicted_precision": Metric(
        "predicted_precision",
        "Predicted precision",
        2,
        "eval/<mode>/predicted_precision at its final evaluation (the precision of the mask SGQN's "
        "attribution predictor predicts)",
    ),
    "predicted_tid": Metric(
        "predicted_tid",
        "Predicted TID",
        2,
        "eval/<mode>/predicted_tid at its final evaluation (the TID of the mask SGQN's attribution "
        "predictor predicts)",
    ),
}
# always written, beside the return table
SALIENCY_TABLES = tuple(m for m in SCORE_METRICS if m.startswith("saliency_"))
# written when a trial logged them
PREDICTED_TABLES = tuple(m for m in SCORE_METRICS if m.startswith("predicted_"))


def integer(value: float) -> str:
    """Rounded like the paper's tables; never ``-0``."""
    return str(round(value))  # an int: "-0" cannot occur


def number(value: float, decimals: int = 0) -> str:
    """`integer` for 0 decimals, else fixed point (never ``-0.00``)."""
    if decimals == 0:
        return integer(value)
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


@dataclass
class Cell:
    """The final returns of one method's complete seeds on one task, in one mode."""

    task: str
    method: str
    mode: str
    seeds: list[str]
    values: list[float]
    expected: int  # seeds the sweep (or, for an experiment, the runs) has for this task and method
    ddof: int = 1
    decimals: int = 0  # of the text: 0 for returns, 2 for saliency scores

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Standard deviation over seeds with `ddof` (1: the sample's); None with fewer than 2 seeds."""
        if self.n < 2 or self.n <= self.ddof:
            return None
        mean = statistics.fmean(self.values)
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (self.n - self.ddof))

    @property
    def short(self) -> bool:
        return self.n < self.expected

    def text(self, pm: str = "±") -> str:
        """``739 ± 21``, ``739`` (one seed), ``512 ± 40 (2/3)`` (seeds missing), ``– (0/3)``."""
        if self.mean is None:
            body = "–"
        else:
            spread = "" if self.std is None else f" {pm} {number(self.std, self.decimals)}"
            body = number(self.mean, self.decimals) + spread
        return body + (f" ({self.n}/{self.expected})" if self.short else "")


@dataclass
class Average:
    """One method's mean over tasks of its per-task means, in one mode."""

    method: str
    mode: str
    tasks: list[str]  # the tasks averaged (those where every expected seed is complete)
    expected: list[str]  # the tasks the method ran on
    value: float | None
    decimals: int = 0

    def text(self) -> str:
        body = "–" if self.value is None else number(self.value, self.decimals)
        short = len(self.tasks) < len(self.expected)
        return body + (f" ({len(self.tasks)}/{len(self.expected)} tasks)" if short else "")


@dataclass
class Table:
    title: str
    tasks: list[str]
    methods: list[str]
    modes: list[str]
    cells: dict[tuple[str, str, str], Cell]  # (task, method, mode)
    averages: dict[tuple[str, str], Average]  # (method, mode)
    missing: list[str]  # ``<trial>: <reason>`` for every trial left out
    n_trials: int
    ddof: int = 1
    footnotes: list[str] = field(default_factory=list)
    metric: str = RETURN  # a key of METRICS

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(method, mode) for method in self.methods for mode in self.modes]

    def cell_text(self, task: str, method: str, mode: str, pm: str = "±") -> str:
        cell = self.cells.get((task, method, mode))
        return "" if cell is None or cell.expected == 0 else cell.text(pm)


def build_table(
    collection: Collection, ddof: int = 1, modes: list[str] | None = None, metric: str = RETURN
) -> Table:
    """The table of `collection`'s complete trials; `modes` (default: every mode evaluated) are its
    columns within each method; `metric`: the final returns, or one of the saliency scores (`METRICS`)."""
    spec = METRICS[metric]
    modes = modes if modes is not None else collection.modes
    cells: dict[tuple[str, str, str], Cell] = {}
    for task in collection.tasks:
        for method in collection.methods:
            trials = collection.trials_of(task, method)
            for mode in modes:
                finals = [t.finals if metric == RETURN else t.scores.get(metric, {}) for t in trials]
                kept = [(t, f[mode]) for t, f in zip(trials, finals, strict=True) if t.complete and mode in f]
                seeds, values = [t.seed for t, _ in kept], [v for _, v in kept]
                cells[(task, method, mode)] = Cell(
                    task, method, mode, seeds, values, len(trials), ddof, spec.decimals
                )
    averages = {}
    for method in collection.methods:
        for mode in modes:
            ran = [c for c in (cells[(t, method, mode)] for t in collection.tasks) if c.expected > 0]
            full = [c for c in ran if c.n == c.expected]
            value = statistics.fmean(c.mean for c in full if c.mean is not None) if full else None
            tasks, ran_on = [c.task for c in full], [c.task for c in ran]
            averages[(method, mode)] = Average(method, mode, tasks, ran_on, value, spec.decimals)
    std = "sample std (ddof=1)" if ddof == 1 else f"std with ddof={ddof}"
    if metric == RETURN:
        footnotes = [
            f"Cells: mean ± {std} over seeds of each seed's final evaluation return (mean alone with one "
            "seed); (k/n): only k of the n expected seeds are complete.",
            f"{AVERAGE}: mean over tasks of the per-task means, only over the tasks where the method has all "
            "its seeds complete; (k/n tasks): k of the n tasks it ran on.",
        ]
    else:
        footnotes = [
            f"Cells: mean ± {std} over seeds of each complete seed's {spec.what} (mean alone with one "
            "seed); (k/n): only k of the n expected seeds are complete and logged it there; – (0/n): none "
            "did (a run from before these scores, an algorithm without them, no saliency at that "
            "evaluation): missing, not 0.",
            f"{AVERAGE}: mean over tasks of the per-task means, only over the tasks where every expected "
            "seed has it; (k/n tasks): k of the n tasks the method ran on.",
        ]
    what = f"sweep {collection.name}" if collection.kind == "sweep" else f"experiment {collection.name}"
    return Table(
        title=f"{spec.title}: {what}",
        tasks=collection.tasks,
        methods=collection.methods,
        modes=modes,
        cells=cells,
        averages=averages,
        missing=collection.missing_lines(),
        n_trials=len(collection.trials),
        ddof=ddof,
        footnotes=footnotes,
        metric=metric,
    )


def build_tables(collection: Collection, ddof: int = 1, modes: list[str] | None = None) -> list[Table]:
    """The return table, then the saliency precision and TID tables (their cells missing for runs that
    did not log them), then the predictor's when any trial logged them: what `sgqn report` writes."""
    logged = {metric for t in collection.trials for metric in t.scores}
    metrics = [RETURN, *SALIENCY_TABLES, *(m for m in PREDICTED_TABLES if m in logged)]
    return [build_table(collection, ddof, modes, metric) for metric in metrics]


# --------------------------------------------------------------------------- writers


def missing_text(table: Table) -> str:
    if not table.missing:
        return (
            "The one trial is complete.\n"
            if table.n_trials == 1
            else f"All {table.n_trials} trials are complete.\n"
        )
    lines = [f"- {line}" for line in table.missing]
    head = f"Missing or incomplete trials ({len(table.missing)} of {table.n_trials}), not in the table:"
    return "\n".join([head, *lines]) + "\n"


def markdown(table: Table, missing: bool = True) -> str:
    """The table, its footnotes and (`missing`) the missing trials, in GitHub markdown."""
    header = ["task", *(f"{method} {mode}" for method, mode in table.columns)]
    lines = [f"## {table.title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":--", *("--:" for _ in table.columns)]) + "|")
    for task in table.tasks:
        row = [task, *(table.cell_text(task, method, mode) for method, mode in table.columns)]
        lines.append("| " + " | ".join(row) + " |")
    row = [f"**{AVERAGE}**", *(table.averages[c].text() for c in table.columns)]
    lines += ["| " + " | ".join(row) + " |", ""]
    lines += [line for note in table.footnotes for line in (note, "")]
    return "\n".join(lines) + "\n" + (missing_text(table) if missing else "")


def markdown_tables(tables: Sequence[Table]) -> str:
    """Several tables of one collection (`build_tables`), one after the other, then the missing trials."""
    return "".join(markdown(table, missing=False) for table in tables) + missing_text(tables[0])


def csv_rows(table: Table) -> list[dict[str, str]]:
    """One row per (task, method, mode) cell (long form), `metric` naming the table; the average row is
    left to the reader. A missing value is an empty field."""

    def text(value: float | None) -> str:
        return "" if value is None else repr(value)

    rows = []
    for (task, method, mode), cell in table.cells.items():
        if cell.expected == 0:
            continue
        rows.append(
            {
                "metric": table.metric,
                "task": task,
                "method": method,
                "mode": mode,
                "mean": text(cell.mean),
                "std": text(cell.std),
                "n_seeds": str(cell.n),
                "n_expected": str(cell.expected),
                "seeds": ";".join(cell.seeds),
                "values": ";".join(repr(v) for v in cell.values),
            }
        )
    return rows


CSV_FIELDS = ["metric", "task", "method", "mode", "mean", "std", "n_seeds", "n_expected", "seeds", "values"]


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$")):
        text = text.replace(char, escaped)
    for char in "#_{}":
        text = text.replace(char, "\\" + char)
    return text


def latex(table: Table, missing: bool = True) -> str:
    """A booktabs ``tabular`` (one column group per method); footnotes and (`missing`) the missing trials
    as comments."""

    def tex_cell(text: str) -> str:
        if not text:
            return ""
        body, paren, mark = text.partition(" (")  # "512 ± 40", " (", "2/3)"
        number = "--" if body == "–" else "$" + body.replace("±", r"\pm") + "$"
        return number + (paren + latex_escape(mark) if paren else "")

    width = len(table.modes)
    lines = [f"% {table.title}", *(f"% {note}" for note in table.footnotes)]
    lines += [f"% missing: {line}" for line in table.missing if missing]
    lines += [r"\begin{tabular}{l" + "c" * len(table.columns) + "}", r"\toprule"]
    groups = [rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(m)}}}" for m in table.methods]
    lines.append(" & ".join(["", *groups]) + r" \\")
    rules = [rf"\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(table.methods))]
    lines.append(" ".join(rules))
    lines.append(" & ".join(["task", *(latex_escape(mode) for _, mode in table.columns)]) + r" \\")
    lines.append(r"\midrule")
    for task in table.tasks:
        row = [latex_escape(task), *(tex_cell(table.cell_text(task, m, mode)) for m, mode in table.columns)]
        lines.append(" & ".join(row) + r" \\")
    lines.append(r"\midrule")
    lines.append(" & ".join([AVERAGE, *(tex_cell(table.averages[c].text()) for c in table.columns)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(tables: Table | Sequence[Table], out: Path) -> list[Path]:
    """``table.md``, ``table.csv`` and ``table.tex`` in `out`, each with every table of `tables` (one
    after the other; the CSV's ``metric`` column tells them apart); returns their paths."""
    tables = [tables] if isinstance(tables, Table) else list(tables)
    out.mkdir(parents=True, exist_ok=True)
    md, tex, csv_path = out / "table.md", out / "table.tex", out / "table.csv"
    md.write_text(markdown_tables(tables))
    tex.write_text("\n".join(latex(table, missing=i == 0) for i, table in enumerate(tables)))
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for table in tables:
            writer.writerows(csv_rows(table))
    return [md, csv_path, tex]
