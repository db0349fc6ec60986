"""Did the redesign cost speed? Interleaved rounds of `benchmarks/update_step.py` on this tree and on a
checkout of the commit before it (8dd3f9c by default), the same rows, each row in a fresh process.

    git worktree add /tmp/before 8dd3f9c
    python benchmarks/redesign_cost.py --before /tmp/before --rounds 3            # quick-start scale
    python benchmarks/redesign_cost.py --before /tmp/before --rounds 3 --paper    # paper scale

Prints, per algorithm, the best and median ms per update of each tree over the rounds and after/before.
On a shared machine read "best" (contention only adds time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def one_round(
    tree: Path, algorithms: list[str], variant: str, shape: list[str]
) -> dict[str, tuple[float, float]]:
    """update_step.py's rows on `tree`: per algorithm (best ms, median ms) per update cycle."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        cmd = [sys.executable, str(tree / "benchmarks" / "update_step.py"), "--variants", variant,
               "--algorithms", *algorithms, "--json", str(out), *shape]  # fmt: skip
        subprocess.run(cmd, env=env, check=True, cwd=tree, stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())
    return {
        row["algorithm"]: (row["best_ms"], row["ms_per_update"]) for row in rows["rows"] if "best_ms" in row
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the commit before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paper", action="store_true", help="batch 128, 11 layers, 84 px (else 32, 3, 40)")
    parser.add_argument("--variant", default="channels_last")
    parser.add_argument("--algorithms", nargs="+", default=["sac", "svea", "sgqn", "drqv2", "drqv2_sgqn"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    shape = [] if args.paper else ["--batch", "32", "--layers", "3", "--size", "40"]
    shape += ["--repeats", str(args.repeats)]
    times: dict[str, dict[str, list[tuple[float, float]]]] = {"before": {}, "after": {}}
    for _ in range(args.rounds):
        for name, tree in (("before", args.before.resolve()), ("after", HERE)):
            for alg, ms in one_round(tree, args.algorithms, args.variant, shape).items():
                times[name].setdefault(alg, []).append(ms)
    print(f"{'algorithm':<12} {'before best':>12} {'after best':>11} {'ratio':>6} {'before med':>11} "
          f"{'after med':>10} {'ratio':>6}")  # fmt: skip
    for alg in args.algorithms:
        b, a = times["before"].get(alg), times["after"].get(alg)
        if not b or not a:
            print(f"{alg:<12} missing")
            continue
        bb, ab = min(t[0] for t in b), min(t[0] for t in a)
        bm, am = statistics.median(t[1] for t in b), statistics.median(t[1] for t in a)
        print(f"{alg:<12} {bb:12.1f} {ab:11.1f} {ab / bb:6.3f} {bm:11.1f} {am:10.1f} {am / bm:6.3f}")


if __name__ == "__main__":
    main()
