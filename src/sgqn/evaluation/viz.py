"""Pictures of what the agent looks at: saliency grids, eval videos with the mask blended in, mask IoU.

Everything here works on the newest frame of a stacked observation (`[..., 3*k, H, W]`, oldest first).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

GRID_ROWS = ("observation", "attribution", "mask", "masked", "predicted")
MIN_CELL = 128  # pixels per grid cell at least: 32-84 px frames are unreadable in the MLflow UI
FONT_SIZE = 14
PAD = 4  # pixels around text and between columns / rows
COLOURBAR_WIDTH = 14
BACKGROUND = (24, 24, 24)  # not black, so that dark frames stay distinguishable from the margins
MASK_COLOUR = np.array([255, 40, 40], dtype=np.float32)
# matplotlib's "inferno" sampled at 17 points (black → purple → orange → pale yellow): perceptually
# uniform and dark at 0, so unimportant pixels recede; interpolated to 256 entries (≤ 7/255 off).
_INFERNO_ANCHORS = np.array(
    [
        [0, 0, 4], [11, 7, 36], [33, 12, 74], [61, 9, 101], [87, 16, 110], [113, 25, 110],
        [138, 34, 106], [163, 44, 97], [188, 55, 84], [210, 70, 68], [228, 90, 49], [241, 115, 29],
        [249, 142, 9], [252, 172, 17], [249, 203, 53], [242, 234, 105], [252, 255, 164],
    ],
    dtype=np.float64,
)  # fmt: skip
COLORMAP: np.ndarray = (
    np.stack(
        [
            np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_INFERNO_ANCHORS)), c)
            for c in _INFERNO_ANCHORS.T
        ],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)  # `[256, 3]` uint8 lookup table for values in [0, 1]


def newest_frame(stacked: torch.Tensor) -> torch.Tensor:
    """`[N, 3k, H, W]` → `[N, 3, H, W]`, the last frame of the stack."""
    return stacked[:, -3:]


def _to_rgb_uint8(images: torch.Tensor) -> np.ndarray:
    """`[N, 3, H, W]` (uint8 or float in [0, 255]) → `[N, H, W, 3]` uint8."""
    return images.detach().float().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _grey(maps: torch.Tensor) -> np.ndarray:
    """`[N, H, W]` in [0, 1] → `[N, H, W, 3]` uint8."""
    grey = (maps.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return np.repeat(grey[..., None], 3, axis=-1)


def normalised_attribution(attribution: torch.Tensor) -> torch.Tensor:
    """|guided backprop| of the newest frame, max over colour, scaled to [0, 1] per sample."""
    magnitude = newest_frame(attribution).abs().amax(dim=1)
    peak = magnitude.flatten(1).amax(dim=1).clamp_min(1e-12)
    return magnitude / peak[:, None, None]


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) → the same shape + `[3]` uint8, through `COLORMAP`."""
    return COLORMAP[(np.clip(values, 0, 1) * 255).round().astype(np.int64)]


@functools.cache
def grid_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at `FONT_SIZE` (its bundled TrueType face; a bitmap font without FreeType)."""
    return ImageFont.load_default(size=FONT_SIZE)


def text_size(text: str) -> tuple[int, int]:
    """Width and height (from the drawing origin) of `text` in `grid_font()`."""
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=grid_font())
    return math.ceil(box[2]), math.ceil(box[3])


@dataclass(frozen=True)
class GridLayout:
    """Where everything sits in a `saliency_grid` picture (pixels; boxes are top, left, bottom, right)."""

    scale: int  # integer nearest-neighbour upscaling of every observation
    cell: tuple[int, int]  # height, width of one upscaled cell
    header: int  # rows above the first cell row (column labels)
    label_width: int  # columns left of the first cell column (row labels)
    column_width: int  # stride between cell columns: the cell, widened for long labels, plus `PAD`
    row_height: int  # stride between cell rows
    colourbar: tuple[int, int, int, int]  # the attribution colour strip, beside the attribution row
    shape: tuple[int, int]  # canvas height, width

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        top = self.header + row * self.row_height
        left = self.label_width + column * self.column_width + (self.column_width - PAD - self.cell[1]) // 2
        return top, left, top + self.cell[0], left + self.cell[1]

    def label_box(self, column: int) -> tuple[int, int, int, int]:
        """The header area of one column, where its caption must fit."""
        left = self.label_width + column * self.column_width
        return 0, left, self.header, left + self.column_width - PAD


def grid_layout(
    n: int, height: int, width: int, column_labels: Sequence[str] = (), min_cell: int = MIN_CELL
) -> GridLayout:
    """The layout of a grid of `n` columns of `height` × `width` observations."""
    scale = max(1, math.ceil(min_cell / min(height, width)))
    cell = (height * scale, width * scale)
    text_height = text_size("Ag_")[1]
    header = text_height + 2 * PAD
    label_width = max(text_size(name)[0] for name in GRID_ROWS) + 2 * PAD
    widest = max((text_size(label)[0] + 2 * PAD for label in column_labels), default=0)
    column_width = max(cell[1], widest) + PAD
    row_height = cell[0] + PAD
    bar_left = label_width + n * column_width + PAD
    bar_top = header + row_height  # row 1: attribution
    colourbar = (bar_top, bar_left, bar_top + cell[0], bar_left + COLOURBAR_WIDTH)
    bar_labels = max(text_size(t)[0] for t in ("0", "max"))
    canvas_width = bar_left + COLOURBAR_WIDTH + PAD + bar_labels + PAD
    canvas_height = header + len(GRID_ROWS) * row_height
    return GridLayout(
        scale, cell, header, label_width, column_width, row_height, colourbar, (canvas_height, canvas_width)
    )


OUTLINE = (0, 255, 255)  # the ground truth's outline on the observation row (cyan)


def outline(masks: np.ndarray) -> np.ndarray:
    """bool `[N, H, W]`: the pixels of each mask that touch a pixel outside it (4-neighbourhood)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    inside = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return masks & ~inside


def saliency_grid(
    obs: torch.Tensor,
    attribution: torch.Tensor,
    mask: torch.Tensor,
    masked_obs: torch.Tensor,
    predicted: torch.Tensor | None = None,
    column_labels: Sequence[str] | None = None,
    min_cell: int = MIN_CELL,
    bodies: torch.Tensor | None = None,
) -> np.ndarray:
    """One image: a column per observation, rows observation | attribution | mask | masked | predicted.

    Cells are upscaled (nearest neighbour, integer factor) to at least `min_cell` pixels, columns widen
    to fit their caption, and the attribution row (normalised |guided backprop|, `COLORMAP`) has a
    colour bar from 0 to the per-observation maximum on its right; the other maps are grey.

    Args:
        obs: stacked observations `[N, 3k, H, W]` in [0, 255].
        attribution: guided-backprop attribution, same shape.
        mask: binary saliency mask at ρ, same shape.
        masked_obs: the observation with non-salient pixels greyed out, same shape.
        predicted: the attribution predictor's probabilities, same shape (row left black if None).
        column_labels: a caption per column (e.g. the test mode).
        min_cell: smallest cell side in pixels.
        bodies: bool `[N, H, W]`, the task's bodies in the newest frame (`sgqn.evaluation.ground_truth`):
            outlined on the observation row, where the critic should look.

    Returns:
        uint8 `[height, width, 3]`, laid out as `grid_layout(N, H, W, column_labels, min_cell)`.
    """
    n, _, height, width = obs.shape
    labels = list(column_labels or [])
    layout = grid_layout(n, height, width, labels, min_cell)
    observations = _to_rgb_uint8(newest_frame(obs))
    if bodies is not None:
        observations[outline(bodies.cpu().numpy())] = OUTLINE
    rows = [
        observations,
        colourise(normalised_attribution(attribution).cpu().numpy()),
        _grey(newest_frame(mask).float().amax(dim=1)),
        _to_rgb_uint8(newest_frame(masked_obs)),
        _grey(newest_frame(predicted).float().mean(dim=1))
        if predicted is not None
        else np.zeros((n, height, width, 3), np.uint8),
    ]
    canvas = np.empty((*layout.shape, 3), np.uint8)
    canvas[:] = BACKGROUND
    for r, row in enumerate(rows):
        big = row.repeat(layout.scale, axis=1).repeat(layout.scale, axis=2)
        for c in range(n):
            top, left, bottom, right = layout.cell_box(r, c)
            canvas[top:bottom, left:right] = big[c]
    top, left, bottom, right = layout.colourbar
    gradient = np.linspace(1, 0, bottom - top)  # max at the top
    canvas[top:bottom, left:right] = colourise(gradient)[:, None]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font, white = grid_font(), (255, 255, 255)
    text_height = text_size("Ag_")[1]
    for r, name in enumerate(GRID_ROWS):
        cell_top, *_ = layout.cell_box(r, 0)
        draw.text((PAD, cell_top + (layout.cell[0] - text_height) // 2), name, fill=white, font=font)
    for c, label in enumerate(labels):
        _, box_left, _, box_right = layout.label_box(c)
        draw.text(
            (box_left + (box_right - box_left - text_size(label)[0]) // 2, PAD), label, fill=white, font=font
        )
    draw.text((right + PAD, top), "max", fill=white, font=font)
    draw.text((right + PAD, bottom - text_height), "0", fill=white, font=font)
    return np.asarray(picture)


def mask_iou(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two binary masks, per sample (`[N, ...]` → `[N]`); 1 when both empty."""
    a, b = mask_a.bool().flatten(1), mask_b.bool().flatten(1)
    intersection = (a & b).sum(dim=1).float()
    union = (a | b).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def blend_mask(frames: np.ndarray, masks: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """Tint salient pixels: frames `[T, H, W, 3]` uint8, masks `[T, H, W]` bool."""
    alpha = masks[..., None].astype(np.float32) * strength
    return (frames * (1 - alpha) + MASK_COLOUR * alpha).round().astype(np.uint8)


def write_video(frames: np.ndarray, path: str | Path, fps: int = 30, scale: int = 2) -> Path:
    """Encode `[T, H, W, 3]` uint8 frames as an H.264 mp4 with PyAV (nearest-neighbour upscaled)."""
    import av  # lazy: only videos need PyAV (a GPU machine's minimal install can leave it out)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
    height, width = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            padded = np.zeros((height, width, 3), np.uint8)
            padded[: frame.shape[0], : frame.shape[1]] = frame
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
        container.mux(stream.encode())
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Decode an mp4 into `[T, H, W, 3]` uint8 (used by tests and notebooks)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
