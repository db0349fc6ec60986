"""Does the package still train exactly as it did? Records, then compares bit for bit:

- a 300-agent-step run of `conf/tiny.yaml` per algorithm: every logged `train/*` and `eval/*` metric
  value, and the final weights (the set of hashes of the floating-point tensors of the checkpoint's state
  dict: parameter names may move, and a tensor two modules share counts once, but values may not);
- the quick start (`conf/quickstart.yaml`, seed 0): its `eval/*/return_mean` curves.

    python benchmarks/same_behaviour.py --record            # writes benchmarks/same_behaviour.json
    python benchmarks/same_behaviour.py                     # runs again, exits 1 on any difference
    python benchmarks/same_behaviour.py --only sac sgqn     # some tiny runs, no quick start

The recording is made by the commit before the redesign (8dd3f9c, its own copy of this script) on the
machine that compares: a run is bit-reproducible for one machine, thread count and set of installed
libraries only (8dd3f9c's code, after a fresh install, differs from its own earlier recording in the last
bits from the first update on), so record the old code where you compare the new:

    git worktree add /tmp/before 8dd3f9c
    (cd /tmp/before && PYTHONPATH=src python benchmarks/same_behaviour.py --record)
    cp /tmp/before/benchmarks/same_behaviour.json benchmarks/
    python benchmarks/same_behaviour.py --record --only drqv2 drqv2_sgqn
    python benchmarks/same_behaviour.py

tiny/drqv2 and tiny/drqv2_sgqn are recorded by this tree: their actor now reads the features encoded
before the critic's step, as DrQ-v2 does (a deliberate change of behaviour, docs/algorithms.md; its
float64 oracle is tests/reference_drqv2.py). Metrics added since a recording (e.g. the saliency focus
scores) are listed, not counted as differences.

Each run is a fresh `sgqn fit` process with 2 intra-op threads (runs are deterministic for a given
thread count), tracked in a temporary MLflow store, without DMC-GB data (the embedded default images).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).with_suffix(".json")
ALGORITHMS = ("sac", "svea", "sgqn", "drqv2", "drqv2_sgqn")
TINY_STEPS = 300
# The configuration recorded is the same configuration today, whatever its flags are called now: DrQ-v2's
# learning rates were the module's shared 1e-3 then (its own defaults are DrQ-v2's 1e-4 now), and its data
# settings the SAC lineage's (the options left null are DrQ-v2's reference for the task now).
_DRQV2_THEN = ["--model.drqv2.actor_lr", "1e-3", "--model.drqv2.critic_lr", "1e-3"]
_DRQV2_THEN += ["--data.action_repeat", "8", "--data.n_step", "1", "--data.update_every_steps", "1"]
_DRQV2_THEN += ["--data.warmup_burst", "true"]
SAME_AS_RECORDED = {"drqv2": _DRQV2_THEN, "drqv2_sgqn": _DRQV2_THEN}


def _fit(root: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGQN_", "MLFLOW_"))}
    env |= {"OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "sgqn", "fit", *args]
    command += ["--trainer.logger.init_args.tracking_uri", f"sqlite:///{root}/mlflow.db"]
    command += ["--trainer.default_root_dir", str(root / "outputs"), "--trainer.enable_progress_bar", "false"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")


def _metrics(root: Path, prefixes: tuple[str, ...]) -> dict[str, list[list[float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)
    out = {}
    for key in sorted(run.data.metrics):
        if key.startswith(prefixes) and not key.endswith(("seconds", "_per_s")):
            history = client.get_metric_history(run.info.run_id, key)
            out[key] = sorted([float(m.step), m.value] for m in history)
    return out


def _weights(root: Path) -> list[str]:
    import torch

    (last,) = root.glob("outputs/**/last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    digests = [
        hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()
        for t in state.values()
        if t.is_floating_point()
    ]
    return sorted(set(digests))


def tiny_run(algorithm: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args = ["-c", str(REPO / "conf" / "tiny.yaml"), "--model.algorithm", algorithm]
        _fit(root, [*args, "--data.num_agent_steps", str(TINY_STEPS), *SAME_AS_RECORDED.get(algorithm, [])])
        return {"metrics": _metrics(root, ("train/", "eval/")), "weights": _weights(root)}


def quickstart() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fit(root, ["-c", str(REPO / "conf" / "quickstart.yaml")])
        curves = _metrics(root, ("eval/",))
        return {"metrics": {k: v for k, v in curves.items() if k.endswith("return_mean")}}


def _differences(name: str, recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs in the metrics recorded (a metric added since is not a difference) and the weights."""
    out = []
    for key in sorted(recorded["metrics"]):
        before, after = recorded["metrics"][key], now["metrics"].get(key)
        if before != after:
            out.append(f"{name}: {key}: recorded {str(before)[:200]}, now {str(after)[:200]}")
    if set(recorded.get("weights", [])) != set(now.get("weights", [])):
        out.append(f"{name}: the final weights differ")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record", action="store_true", help=f"write {RECORD.name} instead of comparing")
    parser.add_argument("--only", nargs="+", choices=ALGORITHMS, help="these tiny runs, no quick start")
    args = parser.parse_args()
    runs = {f"tiny/{a}": (lambda a=a: tiny_run(a)) for a in (args.only or ALGORITHMS)}
    if not args.only:
        runs["quickstart"] = quickstart
    recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    results, problems = dict(recorded), []
    for name, run in runs.items():
        start = time.perf_counter()
        results[name] = run()
        print(
            f"{name}: {len(results[name]['metrics'])} metrics, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        if not args.record:
            added = sorted(set(results[name]["metrics"]) - set(recorded.get(name, {}).get("metrics", {})))
            if added:
                print(f"{name}: {len(added)} metrics added since the recording, e.g. {added[0]}")
            if name not in recorded:
                problems.append(f"{name}: nothing recorded")
            else:
                problems += _differences(name, recorded[name], results[name])
    if args.record:
        RECORD.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"recorded {', '.join(runs)} in {RECORD}")
        return
    for problem in problems:
        print(problem)
    print("bit-identical" if not problems else f"{len(problems)} differences")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
