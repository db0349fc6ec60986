"""Video clips as uint8 `[T, H, W, 3]` frame arrays at a requested size, decoded once and cached.

Each kind of clip resizes the way the reference implementation of the mode that reads it does:
DMC-GB's `.mp4` backgrounds are bilinearly interpolated without antialiasing (`F.interpolate(...,
mode="bilinear", align_corners=False)` then truncated to uint8), DAVIS frames go through PIL's `resize`
as in the Distracting Control Suite.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import logging
from pathlib import Path

import numpy as np

from sgqn.assets.cache import cached_array, file_key
from sgqn.assets.errors import DataSourceError

log = logging.getLogger("sgqn.assets")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MP4_METHOD = "bilinear-noaa-v1"  # bump when the decode/resize output changes, to invalidate caches
_JPEG_METHOD = "pil-bicubic-v1"
_DECODE_BATCH = 32  # frames resized together: bounds the full-resolution frames held at once


class Clip(abc.ABC):
    """A finite frame sequence; `frames` is cached per size and must be treated as read-only."""

    name: str

    @abc.abstractmethod
    def frames(self, height: int, width: int) -> np.ndarray:
        """All frames resized to `height` × `width`: uint8 `[T, height, width, 3]`, T ≥ 1."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # PyTorch's align_corners=False source coordinates, clamped at the low edge as it does.
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 `[N, H, W, 3]` → `[N, height, width, 3]`, equal (±1) to DMC-GB's torch interpolation.

    Separable gather-and-blend: only the source rows and columns that are sampled are touched, which
    makes downscaling a 352² clip several times cheaper than `F.interpolate` on float frames.
    """
    y0, y1, wy = _bilinear_taps(frames.shape[1], height)
    x0, x1, wx = _bilinear_taps(frames.shape[2], width)
    top = frames[:, y0].astype(np.float32)
    rows = top + (frames[:, y1].astype(np.float32) - top) * wy[None, :, None, None]
    left = rows[:, :, x0]
    out = left + (rows[:, :, x1] - left) * wx[None, None, :, None]
    # Truncation (not rounding), as DMC-GB's `(bg * 255.).byte()`.
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=1024)
def _probe_mp4(key: tuple[str, int, int]) -> int:
    import av

    path = key[0]
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataSourceError(f"{path} holds no video stream; expected an MP4 (H.264) clip")
            return int(container.streams.video[0].frames)
    except av.FFmpegError as err:
        raise DataSourceError(
            f"cannot read video {path}: {err}; expected an MP4 (H.264) clip readable by PyAV/FFmpeg"
        ) from err


def _decode_mp4(path: Path, height: int, width: int) -> np.ndarray:
    import av

    chunks: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataSourceError(f"{path} holds no video stream; expected an MP4 (H.264) clip")
            for frame in container.decode(container.streams.video[0]):
                batch.append(frame.to_ndarray(format="rgb24"))
                if len(batch) == _DECODE_BATCH:
                    chunks.append(resize_bilinear(np.stack(batch), height, width))
                    batch = []
    except av.FFmpegError as err:
        raise DataSourceError(
            f"cannot decode video {path}: {err}; expected an MP4 (H.264) clip readable by PyAV/FFmpeg"
        ) from err
    if batch:
        chunks.append(resize_bilinear(np.stack(batch), height, width))
    if not chunks:
        raise DataSourceError(f"video {path} decoded to zero frames; expected a non-empty MP4 clip")
    return np.concatenate(chunks)


class Mp4Clip(Clip):
    """A DMC-GB background video (`video_easy/video3.mp4`, ...)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = self.path.name

    def probe(self) -> int:
        """Open the container header (cheap) so a corrupt file fails at set-up; returns its frame count."""
        if not self.path.is_file():
            raise DataSourceError(f"video {self.path} does not exist")
        return _probe_mp4(file_key(self.path))

    def frames(self, height: int, width: int) -> np.ndarray:
        key = (*file_key(self.path), height, width, _MP4_METHOD)
        log.debug("frames of %s at %dx%d", self.path, height, width)
        return cached_array("mp4", key, lambda: _decode_mp4(self.path, height, width))


def read_image(path: Path, size: tuple[int, int] | None = None, square: bool = False) -> np.ndarray:
    """An image file as uint8 RGB `[H, W, 3]`, optionally centre-cropped square and/or resized (w, h)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as file:
            if size is not None:
                file.draft("RGB", size)  # JPEG: decode at a reduced DCT scale, still ≥ size
            image = file.convert("RGB")
        if square:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if size is not None:
            image = image.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataSourceError(f"cannot read image {path}: {err}") from err


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class JpegDirClip(Clip):
    """A video stored as one image per frame (DAVIS `JPEGImages/480p/<video>/00000.jpg`, ...)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.name = self.folder.name

    def files(self) -> list[Path]:
        files = image_files(self.folder) if self.folder.is_dir() else []
        if not files:
            raise DataSourceError(f"{self.folder} holds no frames; expected one .jpg per frame")
        return files

    def frames(self, height: int, width: int) -> np.ndarray:
        files = self.files()
        # A stable digest (not `hash`, which is salted per process) of every frame file's identity.
        listing = hashlib.sha256(repr([file_key(p) for p in files]).encode()).hexdigest()
        key = (str(self.folder.resolve()), listing, height, width, _JPEG_METHOD)

        def build() -> np.ndarray:
            return np.stack([read_image(p, (width, height)) for p in files])

        return cached_array("jpegdir", key, build)
