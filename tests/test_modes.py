"""DMC-GB test modes: what each changes on screen (by region), and that none touches the physics."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import pytest
import torch

from sgqn.assets import embedded_color_settings
from sgqn.envs import make_env
from sgqn.envs.modes import DISTRACTING_CS_INTENSITIES, MODES, make_mode
from sgqn.envs.modes.distracting import DistractingCSMode
from sgqn.envs.modes.textures import BuiltinTexture, material_id, texture_id
from sgqn.envs.modes.video import KEY_GREEN, chroma_key_mask

SIZE = 64
STEPS = 3
SEED = 0
ALL_MODES = (*[(m, None) for m in MODES if m != "distracting_cs"], ("distracting_cs", 0.2))


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGQN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@dataclass
class Rollout:
    env: Any
    frame: np.ndarray  # last observation, int16 [H, W, 3]
    qpos: np.ndarray

    @property
    def pixels(self) -> Any:  # the ModePixels wrapper
        return self.env.base_env._env

    @property
    def physics(self) -> Any:
        return self.pixels.physics


def rollout(mode: str, intensity: float | None = None, task: str = "walker_walk", **kwargs: Any) -> Rollout:
    env = make_env(
        task,
        image_size=SIZE,
        frame_stack=1,
        render_quality="fast",
        mode=mode,
        intensity=intensity,
        seed=SEED,
        **kwargs,
    )
    td = env.reset()
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(STEPS):
        td["action"] = torch.rand(env.action_spec.shape, generator=generator) * 2 - 1
        td = env.step(td)["next"]
    frame = td["pixels"].permute(1, 2, 0).numpy().astype(np.int16)
    return Rollout(env, frame, env.base_env._env.physics.data.qpos.copy())


@pytest.fixture(scope="module")
def runs() -> dict[str, Rollout]:
    return {mode: rollout(mode, intensity) for mode, intensity in ALL_MODES}


@pytest.fixture(scope="module")
def regions(runs: dict[str, Rollout]) -> dict[str, np.ndarray]:
    """Pixel masks of the train frame from MuJoCo's segmentation render of the same state."""
    physics = runs["train"].physics
    seg = physics.render(SIZE, SIZE, camera_id=0, segmentation=True)
    floor = mujoco.mj_name2id(physics.model.ptr, mujoco.mjtObj.mjOBJ_GEOM, "floor")
    is_geom = seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)
    agent = is_geom & (physics.model.geom_bodyid[np.maximum(seg[..., 0], 0)] > 0)
    masks = {"sky": seg[..., 0] == -1, "floor": is_geom & (seg[..., 0] == floor), "agent": agent}
    assert all(m.sum() > 50 for m in masks.values()), {k: int(m.sum()) for k, m in masks.items()}
    return masks


def changed(a: Rollout, b: Rollout) -> np.ndarray:
    return np.abs(a.frame - b.frame).max(axis=-1) > 0


@pytest.mark.parametrize("mode", [m for m, _ in ALL_MODES if m != "train"])
def test_modes_never_touch_the_physics(runs: dict[str, Rollout], mode: str) -> None:
    np.testing.assert_array_equal(runs[mode].qpos, runs["train"].qpos)
    assert not np.array_equal(runs[mode].frame, runs["train"].frame)


def test_color_hard_recolours_agent_floor_and_sky(
    runs: dict[str, Rollout], regions: dict[str, np.ndarray]
) -> None:
    diff = changed(runs["color_hard"], runs["train"])
    for name in ("agent", "floor", "sky"):
        assert diff[regions[name]].mean() > 0.9, name
    physics, mode = runs["color_hard"].physics, runs["color_hard"].pixels.mode
    assert mode.current is not None
    agent_rgba = physics.model.mat_rgba[material_id(physics, "self")]
    np.testing.assert_allclose(agent_rgba, [*mode.current["self_rgb"], 1.0], rtol=0, atol=1e-6)


def test_color_settings_come_from_the_dmcgb_list(runs: dict[str, Rollout]) -> None:
    physics, mode = runs["color_easy"].physics, runs["color_easy"].pixels.mode
    assert any(mode.current is s for s in mode.settings)
    assert len(mode.settings) == len(embedded_color_settings("easy")) == 100
    tex = texture_id(physics, "grid")
    start = physics.model.tex_adr[tex]
    data = physics.model.tex_data[start : start + 300 * 300 * 3].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(data, axis=0)}
    expected = {
        tuple(np.floor(np.asarray(mode.current[k]) * 255 + 1e-6).astype(int))
        for k in ("grid_rgb1", "grid_rgb2")
    }
    assert expected <= colours  # both checker colours present (plus the unchanged edge marks)


def test_video_easy_replaces_only_the_sky(runs: dict[str, Rollout], regions: dict[str, np.ndarray]) -> None:
    diff = changed(runs["video_easy"], runs["train"])
    assert diff[regions["sky"]].mean() > 0.9
    assert (diff & ~regions["sky"]).sum() <= 0.01 * (~regions["sky"]).sum()  # floor and agent stay


def test_video_hard_replaces_floor_too_and_keeps_the_agent(
    runs: dict[str, Rollout], regions: dict[str, np.ndarray]
) -> None:
    diff = changed(runs["video_hard"], runs["train"])
    assert diff[regions["sky"]].mean() > 0.9
    assert diff[regions["floor"]].mean() > 0.8
    for mode in ("video_easy", "video_hard"):  # key edges may touch a few agent pixels
        assert changed(runs[mode], runs["train"])[regions["agent"]].mean() < 0.03, mode


def test_video_easy_with_dmcgb_clips(
    dmcgb_root: Path, runs: dict[str, Rollout], regions: dict[str, np.ndarray]
) -> None:
    run = rollout("video_easy", data={"dmcgb_root": str(dmcgb_root)})
    assert run.pixels.mode.clip.name.startswith("video")
    np.testing.assert_array_equal(run.qpos, runs["train"].qpos)
    diff = changed(run, runs["train"])
    assert diff[regions["sky"]].mean() > 0.9
    assert (diff & ~regions["sky"]).sum() <= 0.01 * (~regions["sky"]).sum()


def test_video_advances_per_step_and_changes_per_episode() -> None:
    run = rollout("video_hard")
    mode = run.pixels.mode
    sky = run.physics.render(SIZE, SIZE, camera_id=0, segmentation=True)[..., 0] == -1
    td = run.env.reset()
    names = {mode.clip.name}
    first = td["pixels"].permute(1, 2, 0).numpy()
    td["action"] = torch.zeros(run.env.action_spec.shape)
    second = run.env.step(td)["next", "pixels"].permute(1, 2, 0).numpy()
    background = mode._frames
    assert not np.array_equal(background[0], background[1])
    keyed = chroma_key_mask(first) & sky
    np.testing.assert_array_equal(first[keyed], background[0][keyed])
    assert not np.array_equal(first[sky], second[sky])
    for _ in range(5):
        run.env.reset()
        names.add(mode.clip.name)
    assert len(names) > 1
    # Re-rendering a state shows the same video frame.
    np.testing.assert_array_equal(run.pixels.render_frame(), run.pixels.render_frame())


def test_distracting_cs_moves_camera_and_recolours_per_episode() -> None:
    train = rollout("train", task="cartpole_swingup")
    run = rollout("distracting_cs", 0.3, task="cartpole_swingup")
    np.testing.assert_array_equal(run.qpos, train.qpos)
    physics, mode = run.physics, run.pixels.mode
    assert np.linalg.norm(physics.data.cam_xpos[0] - train.physics.data.cam_xpos[0]) > 1e-2
    # Cartpole's ground plane is 30% opaque, so the video shows through it.
    assert physics.model.mat_rgba[material_id(physics, "grid"), 3] == pytest.approx(0.3)
    sky = texture_id(physics, "skybox")
    assert physics.model.tex_width[sky] == physics.model.tex_height[sky] == 2 * SIZE
    # Dynamic: the camera keeps moving from step to step; colours are redrawn each episode.
    pose = physics.data.cam_xpos[0].copy()
    td = run.env.reset()
    colours = physics.model.mat_rgba[:, :3].copy()
    td["action"] = torch.zeros(run.env.action_spec.shape)
    run.env.step(td)
    assert not np.allclose(physics.data.cam_xpos[0], pose)
    run.env.reset()
    assert not np.allclose(physics.model.mat_rgba[:, :3], colours)
    rgb = physics.model.mat_rgba[:, :3]  # within ±0.3 of the originals
    assert np.all((rgb >= mode._color_lo - 1e-12) & (rgb <= mode._color_hi + 1e-12))
    # Re-rendering a state neither walks the camera nor changes colours.
    np.testing.assert_array_equal(run.pixels.render_frame(), run.pixels.render_frame())


def test_distracting_cs_scales_with_intensity() -> None:
    offsets = {}
    for intensity in (0.025, 0.5):
        run = rollout("distracting_cs", intensity, task="cartpole_swingup")
        mode = run.pixels.mode
        offsets[intensity] = np.abs(mode._color_hi - mode._color_lo).max()
        assert mode.camera.delta == pytest.approx(np.pi / 2 * intensity)
    assert offsets[0.5] > 10 * offsets[0.025]


def test_chroma_key_matches_dmcgb_hsv_thresholds() -> None:
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (20_000, 3))
    # Colours on the thresholds: hue exactly 100° / 185°, saturation exactly 80, value exactly 70.
    colours = np.concatenate(
        [colours, [[39, 73, 22], [127, 199, 91], [0, 70, 10], [51, 204, 51], [0, 10, 255]]]
    )
    expected = []
    for r, g, b in colours / 255.0:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        expected.append(100 <= h * 360 <= 185 and s * 255 >= 80 and v * 255 >= 70)
    got = chroma_key_mask(colours.astype(np.uint8)[None])[0]
    np.testing.assert_array_equal(got, np.array(expected))
    assert chroma_key_mask(np.array([[np.array(KEY_GREEN) * 255]], np.uint8))[0, 0]


def _dmcgb_key(rgb: np.ndarray) -> np.ndarray:
    """DMC-GB's `rgb_to_hsv` + threshold test (it is `colorsys`'s formula), vectorised in float64."""
    x = rgb / 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    top, low = x.max(axis=1), x.min(axis=1)
    span = np.where(top > low, top - low, 1.0)
    rc, gc, bc = (top - r) / span, (top - g) / span, (top - b) / span
    h = np.where(r == top, bc - gc, np.where(g == top, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(top > low, np.mod(h / 6.0, 1.0), 0.0) * 360
    s = np.where(top > low, (top - low) / np.where(top > 0, top, 1.0), 0.0) * 255
    return (h >= 100) & (h <= 185) & (s >= 80) & (s <= 255) & (top * 255 >= 70) & (top * 255 <= 255)


@pytest.mark.slow
def test_chroma_key_equals_dmcgb_on_every_colour() -> None:
    codes = np.arange(1 << 24, dtype=np.int32)
    for chunk in np.array_split(codes, 64):
        rgb = np.stack([chunk >> 16, (chunk >> 8) & 255, chunk & 255], axis=1)
        np.testing.assert_array_equal(chroma_key_mask(rgb.astype(np.uint8)[None])[0], _dmcgb_key(rgb))


def test_builtin_texture_recolouring_matches_mujoco(runs: dict[str, Rollout]) -> None:
    """The palette recolouring equals MuJoCo compiling the same texture with the new colours."""
    rgb1, rgb2, mark = (0.3, 0.61, 0.05), (0.9, 0.1, 0.45), (0.2, 0.3, 0.4)
    for name, xml in (
        ("grid", '<texture name="grid" type="2d" builtin="checker" width="300" height="300" mark="edge"'),
        (
            "skybox",
            '<texture name="skybox" type="skybox" builtin="gradient" width="800" height="800" mark="random"',
        ),
    ):
        rgb = {
            key: " ".join(map(str, value))
            for key, value in (("rgb1", rgb1), ("rgb2", rgb2), ("markrgb", mark))
        }
        colours = "".join(f' {key}="{value}"' for key, value in rgb.items()) + "/>"
        model = mujoco.MjModel.from_xml_string(f"<mujoco><asset>{xml}{colours}</asset></mujoco>")
        ours = BuiltinTexture(runs["train"].physics, name).texels(rgb1, rgb2, mark)
        assert np.abs(ours.astype(int) - model.tex_data.astype(int)).max() <= 1, name


def test_invalid_mode_and_intensity_list_the_valid_values() -> None:
    with pytest.raises(
        ValueError, match="valid modes: train, color_easy, color_hard, video_easy, video_hard"
    ):
        make_mode("sepia", domain="walker")
    with pytest.raises(ValueError, match=r"0\.025, 0\.05, 0\.1, 0\.15, 0\.2, 0\.3, 0\.4, 0\.5"):
        make_env("walker_walk", mode="distracting_cs", intensity=0.33)
    with pytest.raises(ValueError, match="intensity in"):
        make_mode("distracting_cs", domain="walker")
    with pytest.raises(ValueError, match="distracting_cs only"):
        make_mode("color_hard", domain="walker", intensity=0.1)
    mode = make_mode("distracting_cs", domain="walker", intensity=0.1 + 1e-12)
    assert isinstance(mode, DistractingCSMode) and mode.intensity == 0.1
    assert set(DISTRACTING_CS_INTENSITIES) == {0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5}
