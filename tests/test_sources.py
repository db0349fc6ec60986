"""Data sources: DMC-GB colour pickles and videos, DAVIS, Places365-style folders, embedded defaults."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sgqn.assets import (
    COLOR_KEYS,
    DAVIS17_TRAINING_VIDEOS,
    EMBEDDED_IMAGES,
    DataSourceError,
    DataSources,
    Mp4Clip,
    clear_memory_cache,
    embedded_clips,
    embedded_color_settings,
    load_color_settings,
    load_overlay_images,
    resize_bilinear,
)
from sgqn.assets import embedded as embedded_module
from sgqn.envs import make_env


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGQN_CACHE_DIR", str(tmp_path / "cache"))
    clear_memory_cache()


class Smuggled:
    """Any class outside the allow-list: pickled by reference, so a weights-only load must refuse it."""

    def __init__(self) -> None:
        self.payload = [0.1, 0.2, 0.3]


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _setting(value: Any = None) -> dict[str, Any]:
    return {k: np.full(3, 0.5) if value is None else value for k in COLOR_KEYS}


# --- colours -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_embedded_json_equals_dmcgb_pickles(dmcgb_root: Path, level: Literal["easy", "hard"]) -> None:
    pickled = load_color_settings(dmcgb_root / f"color_{level}.pt")
    embedded = embedded_color_settings(level)
    assert len(pickled) == len(embedded) == 100
    for a, b in zip(pickled, embedded, strict=True):
        for key in COLOR_KEYS:
            np.testing.assert_array_equal(a[key], b[key])  # bit-identical floats
    assert DataSources(dmcgb_root=str(dmcgb_root)).color_settings(level)[0]["self_rgb"].shape == (3,)


def test_colour_pickle_with_a_foreign_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "color_hard.pt"
    torch.save([_setting(), {**_setting(), "self_rgb": Smuggled()}], path)
    with pytest.raises(DataSourceError, match=rf"{path}.*refused"):
        load_color_settings(path)


def test_colour_pickle_cannot_run_code(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "color_easy.pt"
    torch.save([_setting(RunsCode(marker))], path)
    with pytest.raises(DataSourceError, match="refused"):
        load_color_settings(path)
    assert not marker.exists()


def test_colour_pickle_structure_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save([{"grid_rgb1": np.zeros(3)}], bad)
    with pytest.raises(DataSourceError, match=rf"{bad}.*expected a non-empty list of dicts"):
        load_color_settings(bad)
    torch.save([_setting(np.array([0.1, 2.0, 0.3]))], bad)
    with pytest.raises(DataSourceError, match="in \\[0, 1\\]"):
        load_color_settings(bad)
    good = tmp_path / "good.pt"
    torch.save([_setting()], good)
    assert load_color_settings(good)[0]["grid_rgb1"].tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(DataSourceError, match="does not exist"):
        load_color_settings(tmp_path / "missing.pt")
    with pytest.raises(DataSourceError, match=r"color_easy\.pt does not exist"):
        DataSources(dmcgb_root=str(tmp_path)).color_settings("easy")


# --- DMC-GB videos -------------------------------------------------------------------------------------


def test_dmcgb_videos_decode_resized_as_dmcgb(dmcgb_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sgqn.assets"):
        clips = DataSources(dmcgb_root=str(dmcgb_root)).video_clips("easy")
    on_disk = [p.name for p in (dmcgb_root / "video_easy").glob("video*.mp4")]
    assert [c.name for c in clips] == sorted(on_disk, key=lambda name: int(name[5:-4]))  # numeric order
    assert str(dmcgb_root / "video_easy") in caplog.text
    first = clips[0]
    assert isinstance(first, Mp4Clip)
    frames = first.frames(48, 48)
    assert frames.dtype == np.uint8 and frames.shape == (first.probe(), 48, 48, 3)
    assert frames.std() > 5  # real picture content
    assert first.frames(48, 48) is frames  # cached in process, not decoded again
    clear_memory_cache()
    again = first.frames(48, 48)  # and on disk, memory-mapped back
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, frames)


def test_resize_matches_torch_bilinear_without_antialias() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 97, 131, 3), dtype=np.uint8)
    ours = resize_bilinear(frames, 40, 53).astype(int)
    chw = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = F.interpolate(chw, size=(40, 53), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert np.abs(ours - ref.floor().numpy()).max() <= 1


def test_corrupt_video_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "video_easy").mkdir()
    (tmp_path / "video_easy" / "video0.mp4").write_bytes(
        b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 40
    )
    with pytest.raises(DataSourceError, match=r"video_easy/video0\.mp4"):
        DataSources(dmcgb_root=str(tmp_path)).video_clips("easy")


def test_missing_or_empty_video_dirs_explain_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"does not exist; expected color_easy\.pt"):
        DataSources(dmcgb_root=str(tmp_path / "nowhere")).video_clips("hard")
    (tmp_path / "video_hard").mkdir()
    with pytest.raises(
        DataSourceError, match=r"no video\*\.mp4 in .*video_hard; expected the DMC-GB data layout"
    ):
        DataSources(dmcgb_root=str(tmp_path)).video_clips("hard")
    with pytest.raises(DataSourceError, match="video_hard"):  # reaches the user through make_env too
        make_env("walker_walk", mode="video_hard", data={"dmcgb_root": str(tmp_path)})


def test_data_sources_coercion() -> None:
    assert DataSources.coerce(None) == DataSources()
    assert DataSources.coerce({"dmcgb_root": Path("/x")}) == DataSources(dmcgb_root="/x")
    with pytest.raises(ValueError, match="unknown data source field"):
        DataSources.coerce({"dmcgb": "/x"})
    with pytest.raises(TypeError):
        DataSources.coerce("/x")  # type: ignore[arg-type]


# --- embedded default ----------------------------------------------------------------------------------


def test_embedded_photos_are_bundled_offline() -> None:
    for entry in EMBEDDED_IMAGES:
        image = embedded_module.embedded_image(entry.name)
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256, entry.name


def test_embedded_clips_pan_slowly_and_deterministically() -> None:
    clips = embedded_clips()
    assert len(clips) == len(EMBEDDED_IMAGES)
    frames = clips[1].frames(48, 48)
    assert frames.shape == (embedded_module.CLIP_FRAMES, 48, 48, 3) and frames.dtype == np.uint8
    step = np.abs(frames[1:].astype(int) - frames[:-1]).mean(axis=(1, 2, 3))
    assert 0 < step.mean() < 12  # moving, but slowly
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() < 12  # periodic: loops without a jump
    embedded_module._clip_frames.cache_clear()
    np.testing.assert_array_equal(clips[1].frames(48, 48), frames)
    assert DataSources().video_clips("hard")[0].name.startswith("embedded:")
    assert len(DataSources().davis_clips(2)) == 2


# --- DAVIS ---------------------------------------------------------------------------------------------


def _write_images(folder: Path, count: int, size: tuple[int, int] = (64, 48), seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"{i:05d}.jpg"
        )


def test_davis_layout(tmp_path: Path) -> None:
    frames_dir = tmp_path / "DAVIS" / "JPEGImages" / "480p"
    for name in DAVIS17_TRAINING_VIDEOS[:2]:
        _write_images(frames_dir / name, 3)
    clips = DataSources(davis_root=str(tmp_path / "DAVIS")).davis_clips(2)
    assert [c.name for c in clips] == list(DAVIS17_TRAINING_VIDEOS[:2])
    assert clips[0].frames(32, 32).shape == (3, 32, 32, 3)
    with pytest.raises(DataSourceError, match=r"\['boat', 'boxing-fisheye'\] missing under .*480p"):
        DataSources(davis_root=str(tmp_path / "DAVIS")).davis_clips(4)
    davis = {"davis_root": str(tmp_path / "DAVIS")}
    env = make_env("cartpole_swingup", image_size=32, mode="distracting_cs", intensity=0.05, data=davis)
    assert env.reset()["pixels"].shape == (9, 32, 32)
    assert env.base_env._env.mode.clip.name in DAVIS17_TRAINING_VIDEOS[:2]


def test_davis_errors(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"DAVIS directory .* does not exist"):
        DataSources(davis_root=str(tmp_path / "nowhere")).davis_clips(2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no video folders"):
        DataSources(davis_root=str(tmp_path / "empty")).davis_clips(2)
    (tmp_path / "d" / "bear").mkdir(parents=True)
    (tmp_path / "d" / "bmx-bumps").mkdir()
    with pytest.raises(DataSourceError, match="bear holds no frames"):
        DataSources(davis_root=str(tmp_path / "d")).davis_clips(2)


# --- overlay images ------------------------------------------------------------------------------------


def test_overlay_default_is_embedded_and_deterministic() -> None:
    images = load_overlay_images(None, 32, max_images=20)
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    assert images.float().std() > 10
    assert len({bytes(img.numpy()) for img in images}) == 20  # all different crops
    embedded_module.embedded_overlays.cache_clear()
    assert torch.equal(load_overlay_images(None, 32, max_images=20), images)


def test_overlay_from_flat_folder_and_places_tree(tmp_path: Path) -> None:
    _write_images(tmp_path / "flat", 5, size=(80, 60))
    flat = load_overlay_images(str(tmp_path / "flat"), 24, max_images=16)
    assert flat.shape == (5, 3, 24, 24) and flat.dtype == torch.uint8
    assert torch.equal(load_overlay_images(str(tmp_path / "flat"), 24, max_images=16), flat)  # cached
    train = tmp_path / "places" / "places365_standard" / "train"
    for k, name in enumerate(("airfield", "bakery", "canyon")):
        _write_images(train / name, 4, seed=k)
    tree = load_overlay_images(str(tmp_path / "places"), 16, max_images=6)
    assert tree.shape == (6, 3, 16, 16)


def test_overlay_errors(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist; expected places365_standard"):
        load_overlay_images(str(tmp_path / "nowhere"), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no images found"):
        load_overlay_images(str(tmp_path / "empty"), 32)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataSourceError, match=r"broken/a\.jpg"):
        load_overlay_images(str(tmp_path / "broken"), 32)
    with pytest.raises(ValueError, match="positive"):
        load_overlay_images(None, 0)
