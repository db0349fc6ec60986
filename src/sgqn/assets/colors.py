"""DMC-GB's 100 colour settings per colour mode: safe loading of the `.pt` pickles, and the embedded JSON.

A setting is a dict of four RGB triples in [0, 1]: `grid_rgb1` / `grid_rgb2` (floor checker colours),
`self_rgb` (agent body material) and `skybox_rgb` (top colour of the sky gradient).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sgqn.assets.errors import DataSourceError

log = logging.getLogger("sgqn.assets")

ColorSetting = dict[str, np.ndarray]
COLOR_KEYS: tuple[str, ...] = ("grid_rgb1", "grid_rgb2", "self_rgb", "skybox_rgb")
COLOR_LEVELS: tuple[str, ...] = ("easy", "hard")
COLORS_ASSET = "dmcgb_colors.json"


def _safe_numpy_globals() -> list[Any]:
    """The only globals a DMC-GB colour pickle needs: numpy array reconstruction and float dtypes.

    The pickles name `numpy.core.multiarray._reconstruct` (numpy 1 layout); under numpy 2 that function
    lives in `numpy._core`, so it is allow-listed under both names.
    """
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: list[Any] = [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    allowed += [type(np.dtype(t)) for t in (np.float64, np.float32)]  # numpy ≥ 1.25 dtype classes
    return allowed


def _validate(raw: Any, origin: str) -> list[ColorSetting]:
    expected = (
        f"expected a non-empty list of dicts with keys {list(COLOR_KEYS)}, each an RGB triple in [0, 1]"
    )
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        raise DataSourceError(f"{origin}: {expected}, got {type(raw).__name__}")
    settings: list[ColorSetting] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) != set(COLOR_KEYS):
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataSourceError(f"{origin}: entry {i} is {keys}; {expected}")
        setting = {}
        for key in COLOR_KEYS:
            value = np.asarray(entry[key], dtype=np.float64)
            if value.shape != (3,) or not np.all((value >= 0) & (value <= 1)):
                raise DataSourceError(f"{origin}: entry {i} {key}={entry[key]!r}; {expected}")
            value.setflags(write=False)
            setting[key] = value
        settings.append(setting)
    return settings


def _refused_object(err: Exception) -> str | None:
    """What torch's safe unpickler refused (``object `__main__.Foo```), or None: not a refusal but a
    corrupt file. torch's advice in the message (allow-list it, or weights_only=False) is dropped."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    text = str(err)
    found = re.search(r"GLOBAL (\S+)", text) or re.search(
        r"(?:but got|unrecognized function) (.+?)(?:\.?$|\n)", text
    )
    return f"the object `{found.group(1)}`" if found else None


def _first_sentence(err: Exception) -> str:
    """`Type: first sentence` of an error, without torch's advice (which suggests weights_only=False)."""
    text = str(err).split("WeightsUnpickler error:")[-1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


@functools.lru_cache(maxsize=16)
def _load_pickle(path: str, mtime_ns: int) -> list[ColorSetting]:
    import torch

    try:
        # weights_only: the unpickler refuses every global outside torch's tensor set and this list, so
        # a tampered file cannot run code.
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            raw = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # a corrupt file surfaces as anything (IndexError, KeyError, …) from torch
        refused = _refused_object(err)
        if refused is not None:
            raise DataSourceError(
                f"{path} is a readable torch file but holds {refused}, which is refused for safety (its "
                f"code is never run); expected DMC-GB's colour settings: a list of dicts of numpy arrays"
            ) from err
        size = Path(path).stat().st_size
        raise DataSourceError(
            f"{path} is corrupt or not a torch file ({size} bytes; {_first_sentence(err)}); expected "
            f"DMC-GB's color_easy.pt / color_hard.pt (torch.save of a list of dicts of numpy arrays): "
            f"copy it again from DMC-GB's src/env/data"
        ) from err
    return _validate(raw, path)


def load_color_settings(path: str | Path) -> list[ColorSetting]:
    """DMC-GB colour settings from a `color_easy.pt` / `color_hard.pt` pickle, loaded without running code.

    Raises `DataSourceError` (naming the file) if it is missing, unreadable, holds any non-allow-listed
    object, or does not have the expected structure.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataSourceError(
            f"colour settings file {path} does not exist (DMC-GB's color_easy.pt/color_hard.pt)"
        )
    settings = _load_pickle(str(path.resolve()), path.stat().st_mtime_ns)
    log.info("colour settings: %d from %s", len(settings), path)
    return settings


@functools.lru_cache(maxsize=1)
def _embedded_json() -> dict[str, Any]:
    text = importlib.resources.files("sgqn").joinpath("assets", COLORS_ASSET).read_text(encoding="utf-8")
    return json.loads(text)


def embedded_color_settings(level: Literal["easy", "hard"]) -> list[ColorSetting]:
    """The DMC-GB colour settings shipped with sgqn (`sgqn/assets/dmcgb_colors.json`, MIT, from DMC-GB)."""
    if level not in COLOR_LEVELS:
        raise ValueError(f"unknown colour level {level!r}; valid: {list(COLOR_LEVELS)}")
    settings = _validate(_embedded_json()[f"color_{level}"], f"sgqn/assets/{COLORS_ASSET}")
    log.info("colour settings: %d embedded (color_%s)", len(settings), level)
    return settings


def export_color_json(dmcgb_root: str | Path, out: str | Path) -> None:
    """Write the embedded JSON from a DMC-GB data directory (how `sgqn/assets/dmcgb_colors.json` was made).

    Floats are written with `repr` precision, so the JSON loads back bit-identical to the pickles.
    """
    root = Path(dmcgb_root).expanduser()
    payload: dict[str, Any] = {
        "source": "nicklashansen/dmcontrol-generalization-benchmark, src/env/data/color_{easy,hard}.pt",
        "license": "MIT (Copyright (c) 2020 Nicklas Hansen)",
        "keys": list(COLOR_KEYS),
    }
    for level in COLOR_LEVELS:
        settings = load_color_settings(root / f"color_{level}.pt")
        payload[f"color_{level}"] = [{k: [float(x) for x in s[k]] for k in COLOR_KEYS} for s in settings]
    # One setting per line: diff-friendly and a quarter of the size of an indented dump.
    lines = ["{"]
    for key, value in payload.items():
        if key.startswith("color_"):
            rows = ",\n".join("  " + json.dumps(setting) for setting in value)
            lines.append(f"{json.dumps(key)}: [\n{rows}\n],")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)},")
    lines[-1] = lines[-1].rstrip(",")
    Path(out).write_text("\n".join(lines) + "\n}\n", encoding="utf-8")
