from __future__ import annotations

import numpy as np
import torch

from sgqn.viz import GRID_ROWS, LABEL_WIDTH, blend_mask, mask_iou, read_video, saliency_grid, write_video


def test_grid_layout_and_content() -> None:
    n, h, w = 3, 20, 24
    obs = torch.randint(0, 256, (n, 9, h, w), dtype=torch.uint8)
    attribution = torch.zeros(n, 9, h, w)
    attribution[:, 6:9, 5, 7] = 3.0  # one salient pixel in the newest frame
    mask = attribution != 0
    masked = torch.where(mask, obs.float(), torch.full_like(obs.float(), 100.0))
    grid = saliency_grid(
        obs, attribution, mask, masked, torch.full((n, 9, h, w), 0.5), ["train", "color_hard", "video_hard"]
    )
    header = 12
    assert grid.shape == (header + len(GRID_ROWS) * h, LABEL_WIDTH + n * w, 3) and grid.dtype == np.uint8
    # row 0 shows the newest frame of each observation, column by column
    for c in range(n):
        block = grid[header : header + h, LABEL_WIDTH + c * w : LABEL_WIDTH + (c + 1) * w]
        assert np.array_equal(block, obs[c, 6:9].permute(1, 2, 0).numpy())
    attribution_row = grid[header + h : header + 2 * h, LABEL_WIDTH : LABEL_WIDTH + w, 0]
    assert attribution_row[5, 7] == 255 and attribution_row.sum() == 255  # normalised, one pixel
    predicted_row = grid[header + 4 * h : header + 5 * h, LABEL_WIDTH:, 0]
    assert np.all(predicted_row == 128)  # probability 0.5


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
