"""The tables of `sgqn evaluate`: a row per mode with the returns (mean ± std over episodes, or over
checkpoints' means) and the saliency scores on the task's bodies, as results.csv and results.md."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sgqn.evaluation.episodes import summarize

# The saliency scores of a mode (`saliency_report`'s focus: the critic's; predicted: SGQN's predictor's),
# named as `sgqn fit` logs them (eval/<mode>/<name>); the tables' columns, in this order.
FOCUS_SCORES = ("precision", "recall", "tid", "mass_on_body")
SALIENCY_SCORES = tuple(f"{who}_{score}" for who in ("saliency", "predicted") for score in FOCUS_SCORES)
MARKDOWN_SCORES = {  # the columns results.md shows beside the returns (the CSV has every score)
    "saliency_precision": "precision",
    "saliency_tid": "TID",
    "saliency_mass_on_body": "mass on body",
    "predicted_precision": "predicted precision",
    "predicted_tid": "predicted TID",
    "predicted_mass_on_body": "predicted mass",
}


def results_table(
    per_checkpoint: Mapping[str, Mapping[str, list[float]]],
    saliency: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> list[dict[str, Any]]:
    """One row per mode. One checkpoint: mean ± std over episodes; several (seeds): mean ± std of the
    per-seed means, as DMC-GB tables report.

    With `saliency` (checkpoint → `checkpoint_saliency`), each row also has, per score of
    `SALIENCY_SCORES` (the ``predicted_*`` ones when a checkpoint has one): ``<score>`` the mean over the
    checkpoints that have it, ``<score>_std`` their std (None with one), ``<score>_n`` how many have it;
    a score no checkpoint has is None (missing, never 0)."""
    modes = list(next(iter(per_checkpoint.values())))
    found = {score for by_mode in (saliency or {}).values() for s in by_mode.values() for score in s}
    predictor = any(score.startswith("predicted_") for score in found)  # SGQN's attribution predictor
    columns = [s for s in SALIENCY_SCORES if s.startswith("saliency_") or predictor]
    rows = []
    for mode in modes:
        if len(per_checkpoint) == 1:
            mean, std = summarize(next(iter(per_checkpoint.values()))[mode])
        else:
            mean, std = summarize([statistics.fmean(r[mode]) for r in per_checkpoint.values()])
        episodes = sum(len(r[mode]) for r in per_checkpoint.values())
        row: dict[str, Any] = {
            "mode": mode,
            "return_mean": mean,
            "return_std": std,
            "seeds": len(per_checkpoint),
            "episodes": episodes,
        }
        if saliency is not None:
            for score in columns:
                values = [s[mode][score] for s in saliency.values() if score in s.get(mode, {})]
                row[score] = statistics.fmean(values) if values else None
                row[f"{score}_std"] = summarize(values)[1] if len(values) > 1 else None
                row[f"{score}_n"] = len(values)
        rows.append(row)
    return rows


def score_text(row: Mapping[str, Any], score: str) -> str:
    """``0.62 ± 0.04`` (several seeds), ``0.62`` (one), ``0.60 (2/3)`` (a seed without it), ``–``."""
    if row.get(score) is None:
        return "–"
    std = row[f"{score}_std"]
    text = f"{row[score]:.2f}" + ("" if std is None else f" ± {std:.2f}")
    return text + (f" ({row[f'{score}_n']}/{row['seeds']})" if row[f"{score}_n"] < row["seeds"] else "")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """results.md: a row per mode, the returns then the saliency scores (when measured)."""
    scores = [s for s in MARKDOWN_SCORES if s in rows[0]]
    header = ["mode", "return", "seeds", "episodes", *(MARKDOWN_SCORES[s] for s in scores)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["mode"], f"{r['return_mean']:.1f} ± {r['return_std']:.1f}", r["seeds"], r["episodes"]]
        cells += [score_text(r, s) for s in scores]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if scores:
        predicted = "predicted: SGQN's attribution predictor's; " if "predicted_precision" in scores else ""
        lines += [
            "",
            "precision, TID, mass on body: the critic's saliency (its mask at ρ; mass: its attribution) on "
            "the task's bodies, on the same physics states of a train-env rollout seen in each mode "
            f"(eval/<mode>/saliency_* during fit); {predicted}several checkpoints: mean ± std over them, "
            "(k/n): k of them define it; –: none does (missing, not 0).",
        ]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(markdown_table(rows))
    return csv_path, md_path
