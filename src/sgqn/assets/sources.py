"""Where test-mode and augmentation data come from: user data directories or the embedded default.

`DataSources` names the directories researchers already have; a field left `None` means the embedded
default (`sgqn.assets.embedded`). A directory that is given but missing, empty, corrupt or laid out
differently raises `DataSourceError` naming the path and the expected layout; there is never a silent
fallback to the default. Which source each consumer uses is logged on the "sgqn.assets" logger.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sgqn.assets.cache import cached_array
from sgqn.assets.clips import IMAGE_SUFFIXES, Clip, JpegDirClip, Mp4Clip, image_files, read_image
from sgqn.assets.colors import COLOR_LEVELS, ColorSetting, embedded_color_settings, load_color_settings
from sgqn.assets.embedded import MAX_DEFAULT_OVERLAYS, embedded_clips, embedded_overlays
from sgqn.assets.errors import DataSourceError

log = logging.getLogger("sgqn.assets")

DMCGB_LAYOUT = (
    "color_easy.pt, color_hard.pt, video_easy/video*.mp4, video_hard/video*.mp4 (DMC-GB's src/env/data)"
)
DAVIS_LAYOUT = "JPEGImages/480p/<video>/*.jpg (DAVIS 2017 trainval 480p)"
PLACES_LAYOUT = (
    "places365_standard/train/<class>/*.jpg (Places365-Standard easyformat) or a flat image folder"
)

# The DAVIS 2017 training videos, in the order the Distracting Control Suite takes its first N from.
DAVIS17_TRAINING_VIDEOS: tuple[str, ...] = (
    "bear", "bmx-bumps", "boat", "boxing-fisheye", "breakdance-flare", "bus", "car-turn", "cat-girl",
    "classic-car", "color-run", "crossing", "dance-jump", "dancing", "disc-jockey", "dog-agility",
    "dog-gooses", "dogs-scale", "drift-turn", "drone", "elephant", "flamingo", "hike", "hockey",
    "horsejump-low", "kid-football", "kite-walk", "koala", "lady-running", "lindy-hop", "longboard",
    "lucia", "mallard-fly", "mallard-water", "miami-surf", "motocross-bumps", "motorbike", "night-race",
    "paragliding", "planes-water", "rallye", "rhino", "rollerblade", "schoolgirls", "scooter-board",
    "scooter-gray", "sheep", "skate-park", "snowboard", "soccerball", "stroller", "stunt", "surf",
    "swing", "tennis", "tractor-sand", "train", "tuk-tuk", "upside-down", "varanus-cage", "walking",
)  # fmt: skip
DEFAULT_MAX_OVERLAY_IMAGES = 1024
_OVERLAY_METHOD = "centre-square-bicubic-v1"


def _existing_dir(root: str, what: str, layout: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataSourceError(f"{what} directory {path} does not exist; expected {layout}")
    return path


def _video_number(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


@dataclass(frozen=True)
class DataSources:
    """Data directories for the test modes and the overlay augmentation; `None` = embedded default.

    Attributes:
        dmcgb_root: DMC-GB's data directory: `color_{easy,hard}.pt`, `video_{easy,hard}/video*.mp4`.
        davis_root: a DAVIS 2017 directory (`JPEGImages/480p/<video>/*.jpg`) for `distracting_cs`.
        places_root: Places365 (`places365_standard/train/<class>/*.jpg`) or a flat image folder, for
            the SODA/SVEA/SGQN overlay augmentation.
    """

    dmcgb_root: str | None = None
    davis_root: str | None = None
    places_root: str | None = None

    @classmethod
    def coerce(cls, data: DataSources | Mapping[str, Any] | None) -> DataSources:
        """Accept a `DataSources`, a mapping of its fields (e.g. from a config file) or None."""
        if data is None:
            return cls()
        if isinstance(data, DataSources):
            return data
        if isinstance(data, Mapping):
            unknown = set(data) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(
                    f"unknown data source field(s) {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}"
                )
            return cls(**{k: (None if v is None else os.fspath(v)) for k, v in data.items()})
        raise TypeError(f"data must be a DataSources, a mapping or None, got {type(data).__name__}")

    def color_settings(self, level: Literal["easy", "hard"]) -> list[ColorSetting]:
        """The colour settings of `color_{level}`: DMC-GB's pickle if `dmcgb_root` is set, else embedded."""
        if level not in COLOR_LEVELS:
            raise ValueError(f"unknown colour level {level!r}; valid: {list(COLOR_LEVELS)}")
        if self.dmcgb_root is None:
            return embedded_color_settings(level)
        root = _existing_dir(self.dmcgb_root, "DMC-GB data", DMCGB_LAYOUT)
        path = root / f"color_{level}.pt"
        if not path.is_file():
            raise DataSourceError(f"{path} does not exist; expected the DMC-GB data layout {DMCGB_LAYOUT}")
        return load_color_settings(path)

    def video_clips(self, level: Literal["easy", "hard"]) -> list[Clip]:
        """The background clips of `video_{level}`, in file-number order; headers are checked now."""
        if level not in COLOR_LEVELS:
            raise ValueError(f"unknown video level {level!r}; valid: {list(COLOR_LEVELS)}")
        if self.dmcgb_root is None:
            clips = embedded_clips()
            log.info("video_%s: %d embedded default clips (not the DMC-GB videos)", level, len(clips))
            return clips
        root = _existing_dir(self.dmcgb_root, "DMC-GB data", DMCGB_LAYOUT)
        folder = root / f"video_{level}"
        files = sorted(folder.glob("video*.mp4"), key=_video_number) if folder.is_dir() else []
        if not files:
            raise DataSourceError(
                f"no video*.mp4 in {folder}; expected the DMC-GB data layout {DMCGB_LAYOUT}"
            )
        mp4s = [Mp4Clip(path) for path in files]
        for clip in mp4s:
            clip.probe()
        log.info("video_%s: %d clips from %s", level, len(mp4s), folder)
        return list(mp4s)

    def davis_clips(self, num_videos: int | None) -> list[Clip]:
        """The first `num_videos` DAVIS 2017 training videos (all 60 if None), as the DCS takes them."""
        count = len(DAVIS17_TRAINING_VIDEOS) if num_videos is None else num_videos
        if self.davis_root is None:
            clips = embedded_clips()
            clips = clips[: min(count, len(clips))]
            log.info("distracting_cs: %d embedded default clips (not DAVIS)", len(clips))
            return clips
        frames_dir = _davis_frames_dir(self.davis_root)
        names = DAVIS17_TRAINING_VIDEOS[:count]
        missing = [name for name in names if not (frames_dir / name).is_dir()]
        if missing:
            raise DataSourceError(
                f"DAVIS videos {missing} missing under {frames_dir}; expected {DAVIS_LAYOUT} with the DAVIS "
                f"2017 training videos"
            )
        davis = [JpegDirClip(frames_dir / name) for name in names]
        for clip in davis:
            clip.files()  # an empty video folder fails now, not mid-episode
        log.info("distracting_cs: %d DAVIS videos from %s", len(davis), frames_dir)
        return list(davis)


def _davis_frames_dir(root: str) -> Path:
    base = _existing_dir(root, "DAVIS", DAVIS_LAYOUT)
    # The DAVIS folder itself, its parent (DMC-GB's "datasets" dir) or the 480p folder are all accepted.
    for candidate in (base / "JPEGImages" / "480p", base / "DAVIS" / "JPEGImages" / "480p", base):
        if candidate.is_dir() and any(child.is_dir() for child in candidate.iterdir()):
            return candidate
    raise DataSourceError(f"no video folders in DAVIS directory {base}; expected {DAVIS_LAYOUT}")


def _places_files(root: Path, max_images: int) -> list[Path]:
    """Up to `max_images` images: a flat folder as is, a class tree spread evenly over the classes."""
    flat = image_files(root)
    rng = np.random.default_rng(0)
    if flat:
        picked = sorted(rng.choice(len(flat), size=min(max_images, len(flat)), replace=False))
        return [flat[i] for i in picked]
    train = next((d for d in (root / "places365_standard" / "train", root / "train") if d.is_dir()), root)
    classes = sorted(d for d in train.iterdir() if d.is_dir())
    per_class = math.ceil(max_images / max(len(classes), 1))
    files: list[Path] = []
    for folder in classes:
        names = sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES))
        picked = sorted(rng.choice(len(names), size=min(per_class, len(names)), replace=False))
        files += [folder / names[i] for i in picked]
    if not files:
        raise DataSourceError(f"no images found in {root}; expected {PLACES_LAYOUT}")
    if len(files) > max_images:  # ceil() over the classes overshoots by < one image per class
        files = [files[i] for i in sorted(rng.choice(len(files), size=max_images, replace=False))]
    return files


def load_overlay_images(
    root: str | None, size: int, max_images: int = DEFAULT_MAX_OVERLAY_IMAGES
) -> torch.Tensor:
    """Natural images for the overlay augmentation (SODA/SVEA/SGQN): uint8 `[N, 3, size, size]`.

    Args:
        root: a Places365 directory (holding `places365_standard/train/<class>/`, or the `train` folder
            itself), a flat folder of images, or None for the embedded default (deterministic random
            resized crops of the embedded photos; at most 1024).
        size: output side (the observation size, typically 84).
        max_images: cap on N. From a class tree the images are spread evenly over the classes
            (fixed-seed choice), so the subset is reproducible.

    Each image is centre-cropped square and resized once (bicubic, antialiased); the result is cached in
    process and on disk (`sgqn.assets.cache`), so later calls are instant.
    """
    if not isinstance(size, int) or size <= 0 or not isinstance(max_images, int) or max_images <= 0:
        raise ValueError(f"size and max_images must be positive integers, got {size!r}, {max_images!r}")
    if root is None:
        count = min(max_images, MAX_DEFAULT_OVERLAYS)
        log.info("overlay images: %d embedded default crops (not Places365)", count)
        array = embedded_overlays(size, count)
    else:
        path = _existing_dir(os.fspath(root), "overlay image", PLACES_LAYOUT)
        key = (str(path.resolve()), path.stat().st_mtime_ns, size, max_images, _OVERLAY_METHOD)

        def build() -> np.ndarray:
            files = _places_files(path, max_images)
            with ThreadPoolExecutor(
                max_workers=min(8, os.cpu_count() or 1)
            ) as pool:  # PIL decodes without the GIL
                return np.stack(list(pool.map(lambda p: read_image(p, (size, size), square=True), files)))

        array = cached_array("overlay", key, build)
        log.info("overlay images: %d from %s", len(array), path)
    return torch.from_numpy(np.array(array)).permute(0, 3, 1, 2).contiguous()
