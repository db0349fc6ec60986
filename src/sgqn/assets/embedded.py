"""The embedded default data: photos shipped inside scikit-image and scikit-learn wheels.

They stand in for DMC-GB's videos, DAVIS and Places365 when no data directory is given, so every mode
and the overlay augmentation run offline. The photos are read straight from the installed packages'
files (never through a fetcher that could download) and turned into clips by a slow, deterministic
pan-and-zoom. Results on them are *not* comparable with published DMC-GB numbers. Provenance and
licences: docs/data.md.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgqn.assets.clips import Clip, read_image
from sgqn.assets.errors import DataSourceError


@dataclass(frozen=True)
class EmbeddedImage:
    name: str
    package: str  # installed distribution holding the file
    relpath: str  # file inside the package folder
    credit: str
    licence: str


EMBEDDED_IMAGES: tuple[EmbeddedImage, ...] = (
    EmbeddedImage("astronaut", "skimage", "data/astronaut.png", "NASA (Eileen Collins)", "public domain"),
    EmbeddedImage("chelsea", "skimage", "data/chelsea.png", "Stefan van der Walt", "CC0"),
    EmbeddedImage("coffee", "skimage", "data/coffee.png", "Rachel Michetti", "CC0"),
    EmbeddedImage("rocket", "skimage", "data/rocket.jpg", "SpaceX (DSCOVR launch)", "public domain"),
    EmbeddedImage(
        "hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "NASA/HubbleSite", "public domain"
    ),
    EmbeddedImage(
        "immunohistochemistry", "skimage", "data/ihc.png", "CMMI", "no known copyright restrictions"
    ),
    EmbeddedImage("china", "sklearn", "datasets/images/china.jpg", "danielbuechele (Flickr)", "CC BY 2.0"),
    EmbeddedImage("flower", "sklearn", "datasets/images/flower.jpg", "vultilion (Flickr)", "CC BY 2.0"),
)
CLIP_FRAMES = 150  # one pan/zoom period; frame t and t + CLIP_FRAMES coincide, so looping is seamless
MAX_DEFAULT_OVERLAYS = 1024


def _package_dir(package: str) -> Path:
    # find_spec locates the installed package without importing it (sklearn's import takes ~1 s).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            f"the embedded default images need the {package!r} package; install scikit-image and "
            "scikit-learn, or pass a data directory (sgqn.assets.DataSources)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def embedded_image(name: str) -> np.ndarray:
    """One embedded photo, uint8 `[H, W, 3]` (read-only)."""
    entry = {img.name: img for img in EMBEDDED_IMAGES}.get(name)
    if entry is None:
        raise ValueError(f"unknown embedded image {name!r}; valid: {[i.name for i in EMBEDDED_IMAGES]}")
    path = _package_dir(entry.package) / entry.relpath
    if not path.is_file():
        raise DataSourceError(f"embedded image {path} is missing from the installed {entry.package} package")
    image = read_image(path)
    image.setflags(write=False)
    return image


def _sample_boxes(
    image: np.ndarray, boxes: np.ndarray, size: int, flip: np.ndarray | None = None
) -> np.ndarray:
    """Crop boxes `[N, 4]` (x0, y0, w, h in pixels) of `image`, resized to uint8 `[N, size, size, 3]`.

    Boxes are grouped by octave: each group is sampled (one `grid_sample` call, grids stacked along the
    height axis) from the image pre-shrunk with antialiasing so that bilinear sampling never skips
    source pixels, i.e. no aliasing for large crops.
    """
    h, w = image.shape[:2]
    full = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    octave = np.floor(np.log2(np.maximum(boxes[:, 2:].min(axis=1) / (1.5 * size), 1.0))).astype(int)
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    steps = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # output pixel centres in [0, 1]
    for level in np.unique(octave):
        sel = np.flatnonzero(octave == level)
        src = full
        if level > 0:
            src = F.interpolate(full, scale_factor=0.5**level, mode="bilinear", antialias=True)
        b = torch.from_numpy(boxes[sel]).double()
        xs = b[:, None, 0] + steps[None] * b[:, None, 2]  # [n, size] source x of each output column
        ys = b[:, None, 1] + steps[None] * b[:, None, 3]
        if flip is not None:
            xs = torch.where(torch.from_numpy(flip[sel])[:, None], xs.flip(1), xs)
        gx = (2 * xs / w - 1).float()[:, None, :].expand(-1, size, -1)
        gy = (2 * ys / h - 1).float()[:, :, None].expand(-1, -1, size)
        grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, size, 2)
        sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        sampled = sampled.reshape(3, len(sel), size, size).permute(1, 2, 3, 0)
        out[sel] = sampled.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


class EmbeddedClip(Clip):
    """A slow periodic pan (direction per clip) and, on every other clip, a gentle zoom over one photo."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.image = EMBEDDED_IMAGES[index]
        self.name = f"embedded:{self.image.name}"

    def boxes(self, frames: int = CLIP_FRAMES) -> np.ndarray:
        h, w = embedded_image(self.image.name).shape[:2]
        phase = 2 * math.pi * np.arange(frames) / frames
        zoom = 0.2 if self.index % 2 else 0.0
        side = 0.75 * min(h, w) * (1 - zoom * (1 - np.cos(phase)) / 2)
        angle = 0.4 + self.index * 2 * math.pi / len(EMBEDDED_IMAGES)
        cx = w / 2 + 0.95 * (w - side) / 2 * np.cos(phase) * math.cos(angle)
        cy = h / 2 + 0.95 * (h - side) / 2 * np.cos(phase) * math.sin(angle)
        return np.stack([cx - side / 2, cy - side / 2, side, side], axis=1)

    def frames(self, height: int, width: int) -> np.ndarray:
        return _clip_frames(self.index, height, width)


@functools.lru_cache(maxsize=64)
def _clip_frames(index: int, height: int, width: int) -> np.ndarray:
    clip = EmbeddedClip(index)
    frames = _sample_boxes(embedded_image(clip.image.name), clip.boxes(), max(height, width))
    if height != width:  # square synthesis, then a centre crop to the requested aspect
        top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
        frames = np.ascontiguousarray(frames[:, top : top + height, left : left + width])
    frames.setflags(write=False)
    return frames


def embedded_clips() -> list[Clip]:
    """One clip per embedded photo, in `EMBEDDED_IMAGES` order."""
    return [EmbeddedClip(i) for i in range(len(EMBEDDED_IMAGES))]


@functools.lru_cache(maxsize=8)
def embedded_overlays(size: int, count: int) -> np.ndarray:
    """`count` deterministic random-resized crops (scale 0.08-1, ratio 3/4-4/3, h-flip) of the photos.

    The crop statistics follow torchvision's `RandomResizedCrop` + `RandomHorizontalFlip`, which DMC-GB
    applies to Places365 for the overlay augmentation. uint8 `[count, size, size, 3]`.
    """
    rng = np.random.default_rng(20_240_601)
    out = np.empty((count, size, size, 3), np.uint8)
    owner = np.arange(count) % len(EMBEDDED_IMAGES)
    for k, entry in enumerate(EMBEDDED_IMAGES):
        idx = np.flatnonzero(owner == k)
        if idx.size == 0:
            continue
        image = embedded_image(entry.name)
        h, w = image.shape[:2]
        area = rng.uniform(0.08, 1.0, idx.size) * h * w
        ratio = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), idx.size))
        bw = np.minimum(np.sqrt(area * ratio), w)
        bh = np.minimum(np.sqrt(area / ratio), h)
        x0 = rng.uniform(0, 1, idx.size) * (w - bw)
        y0 = rng.uniform(0, 1, idx.size) * (h - bh)
        flip = rng.uniform(size=idx.size) < 0.5
        out[idx] = _sample_boxes(image, np.stack([x0, y0, bw, bh], axis=1), size, flip)
    out.setflags(write=False)
    return out
