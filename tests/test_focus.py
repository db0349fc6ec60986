"""The focus scores by hand on small masks: precision, recall, TID and attribution mass on the bodies."""

from __future__ import annotations

import math

import pytest
import torch

from sgqn.evaluation.focus import focus_scores, per_frame


def _frames(*masks: list[list[int]]) -> torch.Tensor:
    """bool `[1, F, H, W]` from F nested lists."""
    return torch.tensor([masks], dtype=torch.bool)


def _channels(frames: torch.Tensor) -> torch.Tensor:
    """`[N, F, H, W]` → `[N, 3·F, H, W]`, each frame repeated over its colour channels."""
    return frames.repeat_interleave(3, dim=1)


def test_precision_recall_and_tid_of_one_frame() -> None:
    bodies = _frames([[1, 1, 0], [1, 0, 0]])  # 3 body pixels
    salient = _frames([[1, 0, 0], [0, 0, 1]])  # 2 salient pixels, 1 on a body
    scores = focus_scores(None, _channels(salient), bodies)
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["tid"] == pytest.approx(math.sqrt(1 / 2 * 1 / 3))
    assert "mass_on_body" not in scores


def test_frames_are_scored_apart_and_averaged() -> None:
    bodies = _frames([[1, 1], [0, 0]], [[0, 0], [1, 1]])  # the body moved between the two frames
    salient = _frames([[1, 1], [0, 0]], [[1, 1], [0, 0]])  # the critic kept looking at the first place
    scores = focus_scores(None, _channels(salient), bodies)
    assert scores["precision"] == pytest.approx((1 + 0) / 2)
    assert scores["recall"] == pytest.approx((1 + 0) / 2)


def test_undefined_frames_are_left_out_of_the_averages() -> None:
    bodies = _frames([[1, 0]], [[0, 0]])  # no body in view in frame 2: no recall there
    salient = _frames([[1, 1]], [[0, 1]])
    scores = focus_scores(None, _channels(salient), bodies)
    assert scores["recall"] == pytest.approx(1.0)  # frame 1 only
    assert scores["precision"] == pytest.approx((1 / 2 + 0) / 2)  # both frames have salient pixels
    nothing = focus_scores(None, _channels(_frames([[0, 0]])), _frames([[0, 0]]))
    assert all(math.isnan(v) for v in nothing.values())


def test_mass_on_body_reads_the_largest_channel_of_each_pixel() -> None:
    bodies = _frames([[1, 0], [0, 0]])
    attribution = torch.zeros(1, 3, 2, 2)
    attribution[0, 0, 0, 0] = -3.0  # |−3| on the body pixel (channel 0)
    attribution[0, 2, 0, 0] = 1.0  # a smaller value in another channel of the same pixel
    attribution[0, 1, 1, 1] = 1.0  # 1 off the body
    salient = torch.ones(1, 3, 2, 2, dtype=torch.bool)
    scores = focus_scores(attribution, salient, bodies)
    assert scores["mass_on_body"] == pytest.approx(3 / 4)
    assert per_frame(attribution.abs(), 1)[0, 0].tolist() == [[3.0, 0.0], [0.0, 1.0]]
