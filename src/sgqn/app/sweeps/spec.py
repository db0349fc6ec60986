"""A sweep file and the trials it expands to.

A sweep file (``conf/sweep/*.yaml``) names the base `sgqn fit` config(s), a grid and settings for all
trials::

    name: cpu_mini                       # the sweep's name: its folder and its MLflow parent run
    experiment_name: cpu_mini            # MLflow experiment of the parent and child runs
    config: ../quickstart.yaml           # optional `sgqn fit -c` file(s), relative to this file;
                                         # `{algorithm}` / `{task}` are filled in per trial
    grid:                                # the cross product of these lists is the set of trials
      algorithm: [sac, sgqn]             # shorthand for model.algorithm
      task: [cartpole_swingup]           # shorthand for data.task
      seed: [0, 1, 2]                    # shorthand for data.seed
    overrides:                           # any `sgqn fit` option, for every trial
      data.num_agent_steps: 6000
    algorithm_overrides:                 # options for one algorithm's trials only (settings that
      sgqn: {model.sgqn.decoder_channels: [16, 32, 16]}   # another algorithm would reject)
    resources: {cpu: 2, gpu: 0}          # per trial; gpu may be a fraction (0.25: four trials per GPU)
    max_failures: 3                      # retries of a dead trial, each resuming from its checkpoint

A string value may read the environment: ``${VAR}`` (which must be set) or ``${VAR:-default}`` (the default
where VAR is unset or empty; ``${DMCGB_ROOT:-null}``: DMC-GB's data where given, else the embedded stand-ins).
Every key of ``grid``, ``overrides`` and ``algorithm_overrides`` must be a shorthand or an `sgqn fit` option
(`sgqn.app.sweeps.runner.check_keys`).

Each trial is the plain command line ``sgqn fit [-c <config>] <overrides> --model.algorithm A --data.task T
--data.seed S --trainer.default_root_dir <root>/<name>/runs/<trial> --resume auto``; with no config file
the trial runs at the code's defaults, which are the paper's settings (task-dependent ones from
`sgqn.envs.TASK_DEFAULTS`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sgqn.algorithms import ALGORITHMS
from sgqn.app.errors import ConfigError, did_you_mean

SHORTHANDS = {"algorithm": "model.algorithm", "task": "data.task", "seed": "data.seed"}
KEYS = {
    "name",
    "experiment_name",
    "config",
    "grid",
    "overrides",
    "algorithm_overrides",
    "resources",
    "max_failures",
    "max_concurrent",
    "root",
    "tracking_uri",
}


@dataclass(frozen=True)
class Trial:
    """One `sgqn fit` run of the grid."""

    name: str  # e.g. ``sgqn-cartpole_swingup-s0``
    algorithm: str
    task: str
    seed: int
    configs: tuple[str, ...]  # absolute paths of the `-c` files
    options: tuple[tuple[str, str], ...]  # (dotted key, value as typed on the command line)

    def argv(self, root_dir: str | Path) -> list[str]:
        """The `sgqn fit` arguments (without ``sgqn fit``) that run (or resume) this trial."""
        args: list[str] = []
        for config in self.configs:
            args += ["-c", config]
        for key, value in self.options:
            args += [f"--{key}", value]
        return [*args, "--trainer.default_root_dir", str(root_dir), "--resume", "auto"]

    def record(self) -> dict[str, Any]:
        """What the parent run stores about this trial (`sgqn report` reads it)."""
        options = dict(self.options)
        return {
            "trial": self.name,
            "algorithm": self.algorithm,
            "task": self.task,
            "seed": self.seed,
            "num_agent_steps": int(options["data.num_agent_steps"])
            if "data.num_agent_steps" in options
            else None,
            "overrides": options,
        }


@dataclass
class SweepSpec:
    name: str
    experiment_name: str
    configs: list[str]  # templates, relative to `folder`
    grid: dict[str, list[Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    algorithm_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 2.0, "gpu": 0.0})
    max_failures: int = 3
    max_concurrent: int | None = None
    root: str = "sweeps"
    tracking_uri: str | None = None
    folder: Path = Path(".")  # the sweep file's folder
    text: str = ""  # the sweep file as given
    file: str = ""  # the sweep file's path as given (errors name it)
    command_line: tuple[str, ...] = ()  # the keys of `overrides` given on the `sgqn sweep` command line

    def option_keys(self) -> list[tuple[str, str]]:
        """(where, key) of every option the sweep sets: ``("grid key", "seed")``, ``("overrides key", …)``,
        ``("algorithm_overrides.sgqn key", …)``, ``("option", …)`` (the command line)."""
        found = [("grid key", k) for k in self.grid]
        found += [("option" if k in self.command_line else "overrides key", k) for k in self.overrides]
        for algorithm, options in self.algorithm_overrides.items():
            found += [(f"algorithm_overrides.{algorithm} key", k) for k in options]
        return found

    def trials(self) -> list[Trial]:
        keys = list(self.grid)
        trials = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            trials.append(self._trial(point))
        names = [t.name for t in trials]
        if len(set(names)) != len(names):
            raise ConfigError(f"sweep {self.name}: two trials would share a name; grid {self.grid}")
        return trials

    def _trial(self, point: Mapping[str, Any]) -> Trial:
        options = {SHORTHANDS.get(k, k): v for k, v in point.items()}
        options = {**{SHORTHANDS.get(k, k): v for k, v in self.overrides.items()}, **options}
        algorithm = str(options.get("model.algorithm", "sgqn"))
        own = {SHORTHANDS.get(k, k): v for k, v in self.algorithm_overrides.get(algorithm, {}).items()}
        options = {**options, **own}
        task = str(options.get("data.task", "cartpole_swingup"))
        try:
            seed = int(options.get("data.seed", 0))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{self.file or self.name}: seed {options['data.seed']!r} is not a whole number"
            ) from None
        configs = []
        for template in self.configs:
            path = (self.folder / template.format(algorithm=algorithm, task=task)).resolve()
            if not path.is_file():
                raise ConfigError(f"sweep {self.name}: config file {path} (from {template!r}) does not exist")
            configs.append(str(path))
        extra = [f"{k.rpartition('.')[2]}{_word(v)}" for k, v in point.items() if k not in SHORTHANDS]
        name = "-".join([algorithm, task, f"s{seed}", *extra])
        return Trial(
            name, algorithm, task, seed, tuple(configs), tuple((k, _word(v)) for k, v in options.items())
        )

    def fingerprint(self, trials: list[Trial] | None = None) -> str:
        """Changes when the set of trials or what they run changes (not with resources or retries)."""
        key = [(t.name, t.configs, t.options) for t in (self.trials() if trials is None else trials)]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _word(value: Any) -> str:
    """A value as one command-line word jsonargparse parses back to it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand(value: Any, path: Path, key: str) -> Any:
    """``${VAR}`` in a string value: the environment variable (machine-specific paths stay out of the file);
    ``${VAR:-default}``: the default where VAR is unset or empty, as in a shell."""
    if not isinstance(value, str) or "$" not in value:
        return value

    def variable(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{path}: {key} uses ${{{name}}}, which is not set in the environment (${{{name}:-default}} "
            "gives a default)"
        )

    return _VARIABLE.sub(variable, value)


def parse_overrides(words: Sequence[str]) -> dict[str, str]:
    """``--data.num_agent_steps 300 --eval.modes=[train]`` → ``{"data.num_agent_steps": "300", …}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) == 2:
            raise ConfigError(f"expected an `sgqn fit` option like --data.num_agent_steps 300, got {word!r}")
        key, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise ConfigError(f"option --{key} needs a value")
            value, i = words[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def load_sweep(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and check a sweep file; `overrides` (from the command line) win over the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    text = path.read_text()
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (name, config, grid, …)")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(KEYS))}")
    for key in ("name", "grid"):
        if key not in raw:
            raise ConfigError(f"{path}: `{key}` is required")
    grid = raw["grid"]
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: `grid` maps options to lists of values, e.g. seed: [0, 1, 2]")
    grid = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    if any(not v for v in grid.values()):
        raise ConfigError(f"{path}: every grid list needs at least one value")
    resources = {"cpu": 2.0, "gpu": 0.0} | {k: float(v) for k, v in (raw.get("resources") or {}).items()}
    if set(resources) - {"cpu", "gpu"} or resources["cpu"] <= 0 or resources["gpu"] < 0:
        raise ConfigError(f"{path}: resources are cpu (> 0) and gpu (≥ 0, fractions allowed): {resources}")
    configs = raw.get("config") or []
    configs = configs if isinstance(configs, list) else [configs]
    raw_overrides = {k: _expand(v, path, k) for k, v in (raw.get("overrides") or {}).items()}
    algorithm_overrides = raw.get("algorithm_overrides") or {}
    if not isinstance(algorithm_overrides, dict) or not all(
        isinstance(o, dict | None) for o in algorithm_overrides.values()
    ):
        raise ConfigError(
            f"{path}: `algorithm_overrides` maps algorithms to options, e.g. sgqn: {{data.seed: 1}}"
        )
    unknown = [str(a) for a in algorithm_overrides if str(a) not in ALGORITHMS]
    if unknown:
        raise ConfigError(
            f"{path}: algorithm_overrides key {unknown[0]!r} is not an algorithm"
            f"{did_you_mean(unknown[0], ALGORITHMS)}; valid: {', '.join(ALGORITHMS)}"
        )
    spec = SweepSpec(
        name=str(raw["name"]),
        experiment_name=str(raw.get("experiment_name") or raw["name"]),
        configs=[str(c) for c in configs],
        grid=grid,
        overrides={**raw_overrides, **(overrides or {})},
        algorithm_overrides={
            str(a): {k: _expand(v, path, k) for k, v in (o or {}).items()}
            for a, o in algorithm_overrides.items()
        },
        resources=resources,
        max_failures=int(raw.get("max_failures", 3)),
        max_concurrent=raw.get("max_concurrent"),
        root=str(raw.get("root") or "sweeps"),
        tracking_uri=raw.get("tracking_uri"),
        folder=path.resolve().parent,
        text=text,
        file=str(path),
        command_line=tuple(overrides or ()),
    )
    clash = sorted({SHORTHANDS.get(k, k) for k in spec.grid} & {SHORTHANDS.get(k, k) for k in spec.overrides})
    if clash:
        raise ConfigError(f"{path}: {', '.join(clash)} is both swept (grid) and fixed (overrides)")
    spec.trials()  # names unique, config files exist
    return spec
