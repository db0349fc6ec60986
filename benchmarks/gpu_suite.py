"""One run on a GPU machine: every figure of docs/gpu.md's GPU table, into `--out`.

    bash benchmarks/gpu_suite.sh                      # on the device machine (installs .whl / .gl first)
    python benchmarks/gpu_suite.py --smoke --out /tmp/suite     # the same plumbing, tiny, on CPU

Parts, in this order, each a fresh process with its own time limit, the figures rewritten after each:
  env         the GPU, driver, versions; EGL rendering speed of the paper's tasks (env_throughput.py).
  update      ms per update at paper scale, SGQN and SAC, and the GPU's busy ms per update (profiled):
              the reference update order and the rows of speed_variants.py (`sgqn fit`'s defaults,
              channels-last off, TF32, cuDNN's autotuner, bf16 autocast, the whole update as CUDA
              graphs, also compiled) (update_step.py).
  throughput  end-to-end agent steps/s of `sgqn fit` on walker_walk at paper scale in SGQN's fastest row of
              the update part: the reference's loop, and collection overlapped with evaluation in worker
              processes (train_throughput.py); the projection to a 500k-step run.
  parity      SAC at DrQ's settings (conf/drq.yaml) on cartpole_swingup for 100k env frames, with `sgqn
              fit`'s defaults and with SAC's fastest row of the update part (TF32 if that is the default),
              both at once, each on its share of the cores.
Out: suite.json (all figures), suite.md (the table of docs/gpu.md), logs.tar.gz (every run's log and figures), all
three rewritten after each part. Nothing is estimated: a part that fails or runs out of time is reported
as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or loaded by path (tests)
from speed_variants import fit_flags

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "update", "throughput", "parity")


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, args.out
        # Logs and per-run figures go to a scratch folder, packed into one archive (a remote run may bring
        # back only a few files from $OUT).
        self.work = Path(tempfile.mkdtemp(prefix="sgqn-suite-"))
        self.deadline = time.monotonic() + args.budget_s
        self.figures: dict[str, Any] = {"device": args.device, "smoke": args.smoke, "parts": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, commands: list[list[str]], limit: float) -> list[int]:
        """Run `commands` at once (one log each, `<name>[_i].log`), each killed after `limit` seconds."""
        limit = max(1.0, min(limit, self.left()))
        # Runs at once share the cores: each its own share of intra-op threads (two torch processes with
        # every core each crawl), one at a time all of them.
        threads = str(max(1, (os.cpu_count() or 1) // len(commands)))
        env = os.environ | ({"OMP_NUM_THREADS": threads} if len(commands) > 1 else {})
        procs = []
        for i, command in enumerate(commands):
            log = (self.work / f"{name}{f'_{i}' if len(commands) > 1 else ''}.log").open("w")
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            procs.append(
                (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env), log)
            )
        codes, end = [], time.monotonic() + limit
        for proc, log in procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
                log.write(f"\n[suite] killed after {limit:.0f} s\n")
            log.close()
        return codes

    def record(self, part: str, result: dict[str, Any], started: float) -> None:
        result["seconds"] = round(time.monotonic() - started, 1)
        self.figures["parts"][part] = result
        (self.out / "suite.json").write_text(json.dumps(self.figures, indent=1))
        (self.out / "suite.md").write_text(markdown(self.figures))
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as archive:
            archive.add(self.work, arcname="logs")
        print(f"[suite] {part}: {result.get('status')} in {result['seconds']} s", flush=True)

    # ------------------------------------------------------------------ parts

    def env(self) -> dict[str, Any]:
        info: dict[str, Any] = {"python": sys.version.split()[0]}
        import torch

        info["torch"] = torch.__version__
        if self.args.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name()
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            info["driver, memory"] = smi.stdout.strip()
        steps = "50" if self.args.smoke else "500"
        tasks = ["cartpole_balance"] if self.args.smoke else ["walker_walk", "cartpole_swingup"]
        code = self.run("env", [[sys.executable, "benchmarks/env_throughput.py", "--steps", steps,
                                 "--tasks", *tasks]], 120)[0]  # fmt: skip
        info["env_throughput"] = _table_lines(self.work / "env.log")
        return {"status": _status(code), **info}

    def update(self) -> dict[str, Any]:
        if self.args.smoke:
            shape = ["--quick", "--variants", "reference", "default", "tf32", "tf32+graph", "--profile", "2"]
        else:
            variants = self.args.update_variants
            shape = ["--repeats", "20", "--warmup", "6", "--row-timeout", "150", "--variants", *variants]
        command = [sys.executable, "benchmarks/update_step.py", "--device", self.args.device,
                   "--algorithms", "sgqn", "sac", "--json", str(self.work / "update_step.json"), *shape]  # fmt: skip
        code = self.run("update", [command], self.args.update_limit_s)[0]
        figures = _read(self.work / "update_step.json")
        return {"status": _status(code), **{k: figures[k] for k in ("device", "torch") if k in figures},
                "rows": figures.get("rows", []), "fastest": figures.get("fastest", {})}  # fmt: skip

    def throughput(self) -> dict[str, Any]:
        if self.args.smoke:
            run = ["-c", "conf/tiny.yaml", "--steps", "80", "--data.init_steps", "40"]
        else:  # the paper's settings (the defaults) on walker_walk: 1,000 random steps, the burst of 1,000
            # updates, then 600 learning steps (each ~50 ms eager on an H200) and the final evaluation
            run = ["--steps", "1600", "--data.task", "walker_walk"]
        variant = self._fastest("sgqn", self.args.throughput_variant)
        run += fit_flags(variant)  # the target (≤ 2 h) is for the fastest setting
        results = {}
        # The reference's loop (one env step per update, episodes one after another), and ours with every
        # speed-up: overlapped collection, evaluation in worker processes (4 per mode: 16 for the default
        # modes, one per core of the lent machine). Learning steps/s and seconds per evaluation are timed
        # apart, so each speed-up shows in its own figure.
        workers = "1" if self.args.smoke else "4"
        for overlap in ("false", "true"):
            path = self.work / f"throughput_overlap_{overlap}.json"
            command = [*self._fit("benchmarks/train_throughput.py"), *run, "--json", str(path),
                       "--data.overlap_collection", overlap, "--eval.at_start", "false",
                       "--eval.workers", workers if overlap == "true" else "0"]  # fmt: skip
            # On an H200 a 2,000-step eager run did not finish in 150 s.
            code = self.run(f"throughput_overlap_{overlap}", [command], 240)[0]
            results[f"overlap_{overlap}"] = _read(path) or {"status": _status(code)}
        failed = [k for k, v in results.items() if "status" in v]
        return {"status": "ok" if not failed else f"failed: {failed}", "variant": variant, **results}

    def _fastest(self, algorithm: str, given: str | None, fallback: str = "default") -> str:
        """`given`, else the algorithm's fastest row of ours in this call's update part (as update_step.py
        picks it), else `fallback`."""
        return given or self.figures["parts"].get("update", {}).get("fastest", {}).get(algorithm, fallback)

    def parity(self) -> dict[str, Any]:
        fastest = self._fastest("sac", self.args.parity_variant, "tf32")
        variants = ["default", fastest if fastest != "default" else "tf32"]  # `sgqn fit`'s, the fastest
        run = ["-c", "conf/drq.yaml"]
        if self.args.smoke:  # the same config at a size that runs in seconds
            run += ["--steps", "120", "--data.init_steps", "60", "--data.image_size", "32",
                    "--model.net.num_conv_layers", "2", "--model.net.hidden_dim", "32",
                    "--data.batch_size", "16", "--eval.every_agent_steps", "60", "--eval.episodes", "1"]  # fmt: skip
        else:
            run += ["--steps", "12500"]
        commands = []
        for i, variant in enumerate(variants):
            path = self.work / f"parity_{i}.json"
            commands.append([*self._fit("benchmarks/train_throughput.py"), *run, "--json", str(path),
                             *fit_flags(variant)])  # fmt: skip
        codes = self.run("parity", commands, self.left())
        results = {v: _read(self.work / f"parity_{i}.json") or {"status": _status(c)}
                   for i, (v, c) in enumerate(zip(variants, codes, strict=True))}  # fmt: skip
        failed = [k for k, v in results.items() if "status" in v]
        return {"status": "ok" if not failed else f"failed: {failed}", "fastest_sac": fastest, **results}

    def _fit(self, script: str) -> list[str]:
        accelerator = "gpu" if self.args.device == "cuda" else "cpu"
        # No MLflow and no videos: the GPU image lacks both (scripts/device_bundle.sh carries neither).
        return [sys.executable, script, "--no-mlflow", "--trainer.accelerator", accelerator,
                "--eval.video_every_evals", "0"]  # fmt: skip


def _fit_variant(variant: str) -> str:
    try:
        fit_flags(variant)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return variant


def _status(code: int) -> str:
    return "ok" if code == 0 else "stopped at its time limit" if code < 0 else f"exit {code}"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _table_lines(log: Path) -> list[str]:
    return [line.rstrip() for line in log.read_text().splitlines()[1:] if line.strip()][-12:]


def markdown(figures: dict[str, Any]) -> str:
    """The GPU table of docs/gpu.md from the figures (parts that did not run are named, not filled in)."""
    parts = figures["parts"]
    env = parts.get("env", {})
    update = parts.get("update", {})
    gpu, torch_version = (
        env.get("gpu", update.get("device", figures["device"])),
        env.get("torch", update.get("torch", "?")),
    )
    lines = [f"GPU: {gpu} ({env.get('driver, memory', '')}), torch {torch_version}, "
             f"Python {env.get('python', '?')}", ""]  # fmt: skip
    if update.get("rows"):
        algorithms = sorted({r["algorithm"] for r in update["rows"]})
        if any("busy_ms" in r for r in update["rows"]):
            lines += ["ms per update (in brackets: the GPU's busy ms per update, profiled)", ""]
        lines += ["| update (ms) | " + " | ".join(algorithms) + " |", "|---|" + "---|" * len(algorithms)]
        for variant in dict.fromkeys(r["variant"] for r in update["rows"]):
            cells = []
            for algorithm in algorithms:
                row = next(
                    (r for r in update["rows"] if r["variant"] == variant and r["algorithm"] == algorithm),
                    None,
                )
                busy = f" ({row['busy_ms']:.1f})" if row is not None and "busy_ms" in row else ""
                cells.append(
                    "—" if row is None else row.get("failed", "")[:40] or f"{row['ms_per_update']:.1f}{busy}"
                )
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        timed = {r["variant"]: r for r in update["rows"] if r["algorithm"] == "sgqn" and "best_ms" in r}
        reference, fastest = timed.get("reference"), timed.get(update.get("fastest", {}).get("sgqn", ""))
        if reference and fastest:
            ratio = reference["best_ms"] / fastest["best_ms"]
            lines.append(
                f"\nSGQN learner, reference order ÷ fastest ({fastest['variant']}): {ratio:.1f}× (best cycles)"
            )
        lines.append("")
    for name in ("throughput", "parity"):
        for key, result in parts.get(name, {}).items():
            if key in ("variant", "fastest_sac"):
                lines.append(
                    f"- {name} {key}: {result} ({' '.join(fit_flags(result)) or 'sgqn fit defaults'})"
                )
            if isinstance(result, dict):
                summary = {k: v for k, v in result.items() if not k.startswith("eval_returns")}
                lines.append(f"- {name} {key}: {json.dumps(summary)}")
                if result.get("eval_returns"):
                    lines.append(f"  - returns: {json.dumps(result['eval_returns'])}")
    for name, part in parts.items():
        lines.append(f"- part {name}: {part.get('status')} ({part.get('seconds')} s)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks the plumbing")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda unless --smoke")
    parser.add_argument("--budget-s", type=float, default=560, help="the whole suite's wall-clock limit")
    parser.add_argument(
        "--update-variants",
        nargs="+",
        default=["reference", "default", "tf32", "tf32+graph", "tf32+benchmark", "tf32+graph+compile_update"],
        # Cheapest and likeliest first: a row the part's limit cuts is lost. Others (nchw, bf16, ...) when
        # asked: ~20 s per eager or graph row, and each compiled row spends a minute or two compiling.
        help="update_step.py rows (SGQN and SAC each; speed_variants.py)",
    )
    parser.add_argument("--update-limit-s", type=float, default=330, help="the update part's time limit")
    parser.add_argument(
        "--parity-variant",
        type=_fit_variant,
        help="the second parity run's variant, an `sgqn fit` setting of speed_variants.py (default: SAC's "
        "fastest in this call's update part, else tf32)",
    )
    parser.add_argument(
        "--throughput-variant",
        type=_fit_variant,
        help="the throughput runs' setting (default: SGQN's fastest in this call's update part, else default)",
    )
    args = parser.parse_args()
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MUJOCO_GL", "egl")
    suite = Suite(args)
    for part in args.parts:
        started = time.monotonic()
        if suite.left() < 5:
            suite.record(part, {"status": "not run: the suite's time was spent"}, started)
            continue
        try:
            suite.record(part, getattr(suite, part)(), started)
        except Exception as error:  # one broken part must not cost the others' figures
            suite.record(part, {"status": f"error: {type(error).__name__}: {error}"}, started)
    print((args.out / "suite.md").read_text())
    sys.exit(0 if all(p["status"] == "ok" for p in suite.figures["parts"].values()) else 1)


if __name__ == "__main__":
    main()
