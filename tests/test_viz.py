from __future__ import annotations

import numpy as np
import pytest
import torch

from sgqn.evaluation.viz import (
    BACKGROUND,
    COLORMAP,
    GRID_ROWS,
    PAD,
    blend_mask,
    colourise,
    grid_layout,
    mask_iou,
    read_video,
    saliency_grid,
    text_size,
    write_video,
)


def _inputs(n: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    obs = torch.randint(0, 256, (n, 9, h, w), dtype=torch.uint8)
    attribution = torch.zeros(n, 9, h, w)
    attribution[:, 6:9, 5, 7] = 3.0  # one salient pixel in the newest frame
    mask = attribution != 0
    masked = torch.where(mask, obs.float(), torch.full_like(obs.float(), 100.0))
    return obs, attribution, mask, masked, torch.full((n, 9, h, w), 0.5)


def _cell(grid: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = box
    return grid[top:bottom, left:right]


def test_grid_layout_and_content() -> None:
    n, h, w = 3, 20, 24
    obs, attribution, mask, masked, predicted = _inputs(n, h, w)
    labels = ["train", "color_hard", "video_hard"]
    grid = saliency_grid(obs, attribution, mask, masked, predicted, labels)
    layout = grid_layout(n, h, w, labels)
    assert grid.shape == (*layout.shape, 3) and grid.dtype == np.uint8
    s = layout.scale
    assert s == 7 and layout.cell == (h * s, w * s)  # the smallest integer factor reaching 128 px
    # row 0 shows the newest frame of each observation, nearest-neighbour upscaled, column by column
    for c in range(n):
        frame = obs[c, 6:9].permute(1, 2, 0).numpy()
        assert np.array_equal(_cell(grid, layout.cell_box(0, c)), frame.repeat(s, 0).repeat(s, 1))
    attribution_cell = _cell(grid, layout.cell_box(1, 0))
    assert np.all(attribution_cell[5 * s : 6 * s, 7 * s : 8 * s] == COLORMAP[255])  # normalised peak
    hot = np.any(attribution_cell != COLORMAP[0], axis=-1)
    assert hot.sum() == s * s  # one source pixel, everything else at the map's 0
    assert np.all(_cell(grid, layout.cell_box(4, 0)) == 128)  # predicted probability 0.5, grey


def test_grid_readable_for_small_observations() -> None:
    """32 px frames: cells ≥ 128 px, captions whole inside their columns, a colour bar for attribution."""
    n, h, w = 6, 32, 32
    labels = ["train", "train", "video_hard", "color_hard", "distracting_cs@0.1", "a_much_longer_mode_name"]
    grid = saliency_grid(*_inputs(n, h, w), labels)
    layout = grid_layout(n, h, w, labels)
    assert min(layout.cell) >= 128 and layout.cell == (h * layout.scale, w * layout.scale)
    assert layout.header >= text_size("Ag_")[1] + PAD
    bright = np.any(grid != BACKGROUND, axis=-1)  # ink, antialiased edges included, in the margins
    for c, label in enumerate(labels):
        top, left, bottom, right = layout.label_box(c)
        assert text_size(label)[0] <= right - left  # the caption fits its column, widened if needed
        ink = np.nonzero(bright[top:bottom, left:right].any(axis=0))[0]
        assert ink.min() > 0 and ink.max() < right - left - 1  # not clipped at either side
        assert ink.max() - ink.min() + 1 >= text_size(label)[0] - 1  # the whole caption was drawn
        if c + 1 < n:  # nothing spills into the gap before the next column
            assert not bright[top:bottom, right : layout.label_box(c + 1)[1]].any()
    # the long caption widened every column; the cells stay centred in them
    assert layout.column_width - PAD >= text_size("a_much_longer_mode_name")[0] > layout.cell[1]
    for r, name in enumerate(GRID_ROWS):  # row captions whole, in the left margin beside their row
        top, left, bottom, _ = layout.cell_box(r, 0)
        ink = np.nonzero(bright[top:bottom, :left].any(axis=0))[0]
        assert left >= layout.label_width and ink.max() - ink.min() + 1 >= text_size(name)[0] - 1
    # colour bar: rows follow COLORMAP from max (top) to 0 (bottom), constant across the strip
    bar = _cell(grid, layout.colourbar)
    assert bar.shape[0] == layout.cell[0] and np.all(bar == bar[:, :1])
    lookup = {tuple(colour): i for i, colour in enumerate(COLORMAP.tolist())}
    indices = [lookup[tuple(pixel)] for pixel in bar[:, 0].tolist()]
    assert indices[0] == 255 and indices[-1] == 0 and indices == sorted(indices, reverse=True)
    # its "max" / "0" captions sit to the right of it
    top, _, bottom, right = layout.colourbar
    assert bright[top:bottom, right:].any()


def test_colormap_is_inferno() -> None:
    assert COLORMAP.shape == (256, 3) and COLORMAP.dtype == np.uint8
    assert np.array_equal(colourise(np.array([0.0, 1.0])), COLORMAP[[0, 255]])
    matplotlib = pytest.importorskip("matplotlib")
    reference = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255
    assert np.abs(COLORMAP - reference).max() <= 8


def test_iou_identical_and_hand_made() -> None:
    a = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    a[0, 0, :2, :2] = True  # 4 pixels
    b = a.clone()
    assert torch.equal(mask_iou(a, b), torch.ones(2))  # identical (sample 1: both empty → 1)
    b[0, 0, :2, :2] = False
    b[0, 0, 1:3, 1:3] = True  # 4 pixels, overlapping a in 1 → IoU = 1 / 7
    assert torch.allclose(mask_iou(a, b)[0], torch.tensor(1 / 7))


def test_video_round_trip(tmp_path) -> None:
    frames = np.zeros((12, 21, 21, 3), np.uint8)
    for t in range(12):
        frames[t, :, : t + 1] = 200  # a bar growing frame by frame
    masks = np.zeros((12, 21, 21), bool)
    masks[:, 10, 10] = True
    path = write_video(blend_mask(frames, masks), tmp_path / "episode.mp4", fps=10, scale=2)
    decoded = read_video(path)
    assert decoded.shape == (12, 42, 42, 3)
    assert abs(float(decoded[5, :, :10].mean()) - 200) < 12 and decoded[5, :, 16:].mean() < 12
