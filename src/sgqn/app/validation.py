"""Checks of a `sgqn fit` configuration that run before anything is created (MLflow run, trainer, envs).

Each check raises `ConfigError` with one line naming the option, the bad value and the valid choices or
the fix; a bad value then fails in a second instead of half a minute into a run left FAILED in MLflow.
The data checks use the same loaders as the test modes (which cache what they read), only for the
modes requested.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sgqn.algorithms import algorithms_with
from sgqn.app.errors import ConfigError, did_you_mean
from sgqn.app.ranges import check_image_size, check_ranges, check_seed
from sgqn.app.store import default_tracking_uri, sqlite_path
from sgqn.assets.clips import IMAGE_SUFFIXES
from sgqn.assets.errors import DataSourceError
from sgqn.assets.sources import PLACES_LAYOUT, DataSources
from sgqn.data.replay import check_capacity_fits, check_disk_fits, default_replay_capacity
from sgqn.envs import MODES, TASKS
from sgqn.envs.modes.distracting import GROUND_PLANE_ALPHA, INTENSITIES, NUM_VIDEOS
from sgqn.envs.tasks import REFERENCE_OPTIONS, TASK_DEFAULTS, resolve_settings

MAX_ACTION_DIM = 6  # the largest action of `TASKS` (walker, cheetah): sizes the replay RAM check
DISK_MARGIN_BYTES = 64 * 2**20  # MLflow's database, saliency grids, config.yaml
SERVER_TIMEOUT_S = 3.0  # a tracking server that does not answer within this is reported at start-up


def resolved_data_params(data: Mapping[str, Any]) -> dict[str, Any]:
    """The values a `DMCDataModule` with these arguments actually uses where they say ``None``: its
    learner's reference for the task (`sgqn.envs.tasks.resolve_settings`; ``learner`` absent: the SAC
    lineage's), the whole run's replay capacity, the embedded images and clips."""
    out: dict[str, Any] = {}
    task = data.get("task")
    given = {option: data.get(option.removeprefix("data.")) for option in REFERENCE_OPTIONS}
    resolved = resolve_settings(data.get("learner") or "sac", task if task in TASK_DEFAULTS else None, given)
    for option, value in resolved.items():
        key = option.removeprefix("data.")
        if option.startswith("data.") and data.get(key) is None and value is not None:
            out[key] = value
    steps = out.get("num_agent_steps", data.get("num_agent_steps"))
    if out.get("replay_capacity", data.get("replay_capacity")) is None and steps is not None:
        out["replay_capacity"] = default_replay_capacity(int(steps))
    for key in ("dmcgb_root", "davis_root", "places_root", "overlay_root"):
        if key in data and data[key] is None:
            out[key] = "embedded"  # the embedded default images and clips (docs/data.md)
    return out


# --------------------------------------------------------------------------- single checks


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(
            f"--data.task: unknown task {task!r}{did_you_mean(str(task), TASKS)}; valid: {', '.join(TASKS)}"
        )


def valid_modes() -> str:
    """The valid `--eval.modes` entries, as one line."""
    names = [m for m in MODES if m != "distracting_cs"]
    return f"{', '.join(names)}, distracting_cs@<intensity> (intensity in {', '.join(map(str, INTENSITIES))})"


def check_mode(mode: str, task: str) -> float | None:
    """One `--eval.modes` entry; returns its `distracting_cs` intensity (None for other modes)."""
    name, at, value = str(mode).partition("@")
    if name not in MODES:
        hint = did_you_mean(str(mode), [*MODES, "distracting_cs@0.1"])
        raise ConfigError(f"--eval.modes: unknown mode {mode!r}{hint}; valid: {valid_modes()}")
    if name != "distracting_cs":
        if at:
            raise ConfigError(f"--eval.modes: {mode!r}: only distracting_cs takes an @<intensity>")
        return None
    try:
        intensity = float(value)
    except ValueError:
        intensity = float("nan")
    match = next((i for i in INTENSITIES if abs(i - intensity) < 1e-9), None)
    if match is None:
        raise ConfigError(
            f"--eval.modes: {mode!r} needs one of the intensities {', '.join(map(str, INTENSITIES))}, "
            f"e.g. distracting_cs@0.1"
        )
    domain = task.rpartition("_")[0]
    if domain not in GROUND_PLANE_ALPHA:
        raise ConfigError(
            f"--eval.modes: distracting_cs supports the domains {', '.join(sorted(GROUND_PLANE_ALPHA))}, "
            f"not {domain!r} (--data.task {task})"
        )
    return match


def check_mode_data(modes: Sequence[str], intensities: Sequence[float | None], sources: DataSources) -> None:
    """Load (headers, colour pickles, folder layouts) what the requested modes read from user data."""
    for mode, intensity in zip(modes, intensities, strict=True):
        name = mode.partition("@")[0]
        level: Any = name.rpartition("_")[2]
        try:
            if name.startswith("color_") and sources.dmcgb_root is not None:
                sources.color_settings(level)
            elif name.startswith("video_") and sources.dmcgb_root is not None:
                sources.video_clips(level)
            elif name == "distracting_cs" and sources.davis_root is not None:
                assert intensity is not None
                sources.davis_clips(NUM_VIDEOS[intensity])
        except DataSourceError as err:
            flag = "--data.davis_root" if name == "distracting_cs" else "--data.dmcgb_root"
            raise ConfigError(f"{flag} (for eval mode {mode}): {_one_line(err)}") from err


def check_places_root(root: str) -> None:
    """A flat image folder or a class tree (Places365) with at least one image; stops at the first."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--data.places_root: directory {path} does not exist; expected {PLACES_LAYOUT}")
    train = next((d for d in (path / "places365_standard" / "train", path / "train") if d.is_dir()), path)
    folders: list[str | Path] = [path, *(e.path for e in os.scandir(train) if e.is_dir())]
    for folder in folders:
        with os.scandir(folder) as entries:
            if any(e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file() for e in entries):
                return
    raise ConfigError(f"--data.places_root: no images in {path}; expected {PLACES_LAYOUT}")


def check_replay(data: Any, root: str | Path) -> None:
    """The replay buffer (`data.replay_capacity`, default the whole run) must fit in free RAM, or for
    `data.replay_storage: disk` on the free disk of its folder (`data.replay_dir`, else under `root`)."""
    capacity = data.get("replay_capacity") or default_replay_capacity(int(data["num_agent_steps"]))
    size = int(data["image_size"])
    try:
        if data.get("replay_storage", "memory") == "disk":
            rows = capacity + int(data.get("replay_spare_rows") or 0)
            check_disk_fits(rows, (3, size, size), MAX_ACTION_DIM, data.get("replay_dir") or root)
        else:
            check_capacity_fits(capacity, (3, size, size), MAX_ACTION_DIM)
    except ValueError as err:
        raise ConfigError(
            f"--data.replay_capacity: {err}; lower --data.replay_capacity (default: --data.num_agent_steps)"
        ) from err


def check_free_disk(
    folder: str | Path, needed_bytes: int, option: str = "--trainer.default_root_dir"
) -> None:
    """`folder` (or its nearest existing parent) must have `needed_bytes` free."""
    path = Path(folder).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise ConfigError(
            f"{option}: {path} has {free / 2**30:.2f} GiB free but the run's checkpoints need about "
            f"{needed_bytes / 2**30:.2f} GiB; free some space or point {option} at another disk"
        )


def _not_writable(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (or, while it does not exist, in its nearest existing
    parent, where it would be created), else None. Writes a probe: `os.access` says yes to root."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"{existing} is not writable ({err.strerror or err})"
    return None


def check_writable_dir(folder: str | Path, option: str) -> None:
    """`folder` can be created (or is) and written to; checked without creating it."""
    path = Path(folder).expanduser().resolve()
    reason = _not_writable(path)
    if reason:
        raise ConfigError(f"{option}: cannot write to {path}: {reason}; point {option} at a writable folder")


def check_tracking_uri(uri: str, option: str) -> None:
    """A ``sqlite:///`` store's database and folder are writable; an ``http(s)://`` server answers."""
    database = sqlite_path(uri)
    if database is not None:
        path = database.expanduser().resolve()
        reason = _not_writable(path.parent)  # sqlite writes its journal next to the database
        if reason is None and path.exists():
            try:
                open(path, "r+b").close()  # opened for writing, nothing written
            except OSError as err:
                reason = f"{path} is not writable ({err.strerror or err})"
        if reason:
            raise ConfigError(
                f"{option}: the MLflow database {uri} cannot be written: {reason}; "
                f"use a writable location, e.g. sqlite:///{Path.home() / 'mlflow.db'}"
            )
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return  # an error page is still an answer (an auth proxy, an older server without /health)
        except (OSError, http.client.HTTPException, ValueError) as err:  # refused, timeout, unknown host
            why = getattr(err, "reason", None) or err
            raise ConfigError(
                f"{option}: the MLflow tracking server {uri} does not answer ({why}); start it "
                f"(mlflow server …) or point {option} at a running one"
            ) from err


def _tracking_uris(trainer: Any) -> list[tuple[str, str]]:
    """(URI, option) of each MLflow logger in the trainer config."""
    loggers = trainer.get("logger")
    found = []
    for i, entry in enumerate(loggers if isinstance(loggers, list) else [loggers]):
        if not hasattr(entry, "get") or "MLFlow" not in str(entry.get("class_path", "")):
            continue  # True / False / None, or another logger
        uri = (entry.get("init_args") or {}).get("tracking_uri")
        where = "--trainer.logger" + (f"[{i}]" if isinstance(loggers, list) else "")
        option = f"{where}.init_args.tracking_uri"
        if not uri and "MLFLOW_TRACKING_URI" in os.environ:
            option += " (from $MLFLOW_TRACKING_URI)"
        found.append((str(uri or default_tracking_uri()), option))
    return found


def checkpoint_bytes(parameters: int, trainable: int) -> int:
    """Size of one checkpoint: fp32 weights plus Adam's two moments of the trainable ones, + overhead."""
    return 4 * (parameters + 2 * trainable) + 2**20


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# --------------------------------------------------------------------------- the whole config


# The config groups that only some algorithms read: a value given to another algorithm is a mistake (it
# would be silently ignored). A value equal to its default is not "given".
GROUP_USERS: dict[str, tuple[str, ...]] = {
    "sac": algorithms_with(learner="sac"),
    "svea": ("svea",),
    "sgqn": algorithms_with(guidance="sgqn"),  # SGQN's saliency guidance, on SAC or on DrQ-v2
    "drqv2": algorithms_with(learner="drqv2"),
}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def check_algorithm_settings(model: Any) -> None:
    """A setting of another algorithm (e.g. ``--model.sgqn.quantile`` with ``sac``) is an error, not
    ignored."""
    from dataclasses import fields

    from sgqn.algorithms.factory import AgentConfig

    algorithm, defaults = model["algorithm"], AgentConfig()
    given = []
    for group, users in GROUP_USERS.items():
        values, default = model.get(group) or {}, getattr(defaults, group)
        for field in fields(default):
            value = values.get(field.name, getattr(default, field.name))
            if algorithm not in users and _plain(value) != _plain(getattr(default, field.name)):
                given.append(f"--model.{group}.{field.name} ({'/'.join(users)} only)")
    if given:
        raise ConfigError(
            f"--model.algorithm {algorithm} does not use {', '.join(given)}; remove them (or the config "
            "file that sets them) or choose the algorithm they belong to"
        )


def validate_fit_config(config: Any) -> None:
    """Check a parsed `sgqn fit` config (`cli.config["fit"]`) before any class is instantiated."""
    data, model = config["data"], config["model"]
    check_task(data["task"])
    check_seed(data.get("seed"))
    check_ranges(config)
    check_image_size(data, model)
    check_algorithm_settings(model)
    evaluation = config.get("eval")
    modes = [str(m) for m in (evaluation["modes"] if evaluation is not None else None) or []]
    intensities = [check_mode(mode, data["task"]) for mode in modes]
    check_replay(data, config["trainer"]["default_root_dir"] or ".")
    trainer, checkpoint = config.get("trainer") or {}, config.get("checkpoint") or {}
    for folder, option in (
        (trainer.get("default_root_dir"), "--trainer.default_root_dir"),
        (checkpoint.get("dirpath"), "--checkpoint.dirpath"),
    ):
        if folder:
            check_writable_dir(folder, option)
    for uri, option in _tracking_uris(trainer):
        check_tracking_uri(uri, option)
    if model["algorithm"] in ("svea", "sgqn") and data.get("places_root") is not None:
        check_places_root(data["places_root"])
    sources = DataSources(data.get("dmcgb_root"), data.get("davis_root"), data.get("places_root"))
    check_mode_data(modes, intensities, sources)  # last: it reads files


__all__ = [
    "GROUP_USERS",
    "ConfigError",
    "check_algorithm_settings",
    "check_free_disk",
    "check_mode",
    "check_task",
    "check_tracking_uri",
    "check_writable_dir",
    "checkpoint_bytes",
    "default_replay_capacity",
    "did_you_mean",
    "resolved_data_params",
    "valid_modes",
    "validate_fit_config",
]
