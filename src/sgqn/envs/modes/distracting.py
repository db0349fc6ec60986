"""`distracting_cs`: the Distracting Control Suite as DMC-GB configures it (dynamic, 8 intensities).

Three distractions, each scaled by the intensity s (DMC-GB's `suite_utils`, `dynamic=True`):

* background: a video on the sky texture (all six cube faces show the same frame), starting at a random
  frame and stepping forward or backward every 2 physics steps, bouncing at the ends; DAVIS 2017
  training videos, the first 2/2/4/6/8/all for s = .025/.05/.1/.15/.2/≥.3. The floor's alpha is set per
  domain (reacher 0, walker and cheetah 1, others 0.3) so the video shows through it.
* camera: a random walk of the camera on a sphere around its look-at point (trackcom cameras follow the
  agent): azimuth, elevation and roll within ±s·π/2, radius within [1 - s/2, 1 + 1.5 s]× the original,
  velocity noise 0.1 s, speed ≤ 0.4 s (× radius / 4), roll speed ≤ s·π/50; above the ground for every
  domain but reacher.
* colour: every material's RGB drawn uniformly within ±s of the original each episode, then a random
  walk with step 0.03 s, clipped to that box.

The reference applies the per-step dynamics once per *physics* step (its wrappers sit under the action
repeat), so each agent step here advances them `action_repeat` times before the frame is rendered.
Deviation: the sky texture is `2 × image_size` texels square (≤ 800, the reference's) instead of 800²;
MuJoCo mip-maps it, so frames match the 800² version to < 1 grey level mean absolute difference at
84 px, while the per-step upload (with mip-map generation, the bulk of this mode's cost on a CPU
renderer) is several times cheaper.
"""

from __future__ import annotations

import math
from typing import Any

import mujoco
import numpy as np

from sgqn.assets.clips import Clip
from sgqn.envs.modes.base import Mode
from sgqn.envs.modes.textures import material_id, texture_id, upload_texture
from sgqn.envs.names import DISTRACTING_CS_INTENSITIES

INTENSITIES: tuple[float, ...] = DISTRACTING_CS_INTENSITIES
NUM_VIDEOS: dict[float, int | None] = {
    0.025: 2, 0.05: 2, 0.1: 4, 0.15: 6, 0.2: 8, 0.3: None, 0.4: None, 0.5: None
}  # fmt: skip
GROUND_PLANE_ALPHA: dict[str, float] = {
    "reacher": 0.0, "walker": 1.0, "cheetah": 1.0, "cartpole": 0.3, "finger": 0.3, "ball_in_cup": 0.3
}  # fmt: skip
FRAME_EVERY = 2  # physics steps per background frame
_CAMERA_FIXED = int(mujoco.mjtCamLight.mjCAMLIGHT_FIXED)
_CAMERA_TRACKCOM = int(mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM)


def _spherical(v: np.ndarray) -> np.ndarray:
    """(x, y, z) → (radius, azimuth, polar angle from +z)."""
    return np.array([np.linalg.norm(v), math.atan2(v[1], v[0]), math.atan2(math.hypot(v[0], v[1]), v[2])])


def _cartesian(s: np.ndarray) -> np.ndarray:
    r, azimuth, polar = s
    return r * np.array(
        [math.sin(polar) * math.cos(azimuth), math.sin(polar) * math.sin(azimuth), math.cos(polar)]
    )


def _axis_angle(cos: float, sin: float, axis: np.ndarray) -> np.ndarray:
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return cos * np.eye(3) + sin * k + (1.0 - cos) * np.outer(axis, axis)


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _look_at_level(target: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """Camera rotation (MuJoCo cameras look along -z) centring `target`, with a level horizon."""
    d = (target - eye) / np.linalg.norm(target - eye)
    yaw = math.atan2(d[0], d[1])
    pitch = math.atan2(d[2], math.hypot(d[0], d[1])) + math.pi / 2
    return _rot_z(-yaw) @ _rot_x(pitch)


def _look_at_free(target: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """Shortest rotation of -z onto the view direction: no yaw flip at the poles (reacher looks down)."""
    d = (target - eye) / np.linalg.norm(target - eye)
    forward = np.array([0.0, 0.0, -1.0])
    axis = np.cross(forward, d)
    sin = float(np.linalg.norm(axis))
    return _axis_angle(float(d @ forward), sin, axis / (sin + 1e-4))


class _Camera:
    """The DCS camera random walk for one camera, in spherical coordinates around the look-at point."""

    def __init__(self, camera_id: int, scale: float, upper_quadrant: bool) -> None:
        self.camera_id = camera_id
        self.upper_quadrant = upper_quadrant
        self.delta = math.pi / 2 * scale  # azimuth, elevation and roll half-ranges
        self.vel_std, self.max_vel = 0.1 * scale, 0.4 * scale
        self.roll_std, self.max_roll_vel = math.pi / 300 * scale, math.pi / 50 * scale
        self.zoom_in, self.zoom_out = 0.5 * scale, 1.5 * scale

    @staticmethod
    def _look_point(physics: Any, cam: int) -> np.ndarray:
        # The point straight ahead of the camera at the agent's distance.
        data = physics.data
        dist = np.linalg.norm(data.cam_xpos[cam] - data.subtree_com[1])
        return data.cam_xmat[cam].reshape(3, 3) @ np.array([0.0, 0.0, -dist]) + data.cam_xpos[cam]

    def reset(self, physics: Any, rng: np.random.Generator) -> None:
        cam = self.camera_id
        mode = int(physics.model.cam_mode[cam])
        if mode not in (_CAMERA_FIXED, _CAMERA_TRACKCOM):
            raise ValueError(
                f"distracting_cs supports fixed and trackcom cameras; camera {cam} has mode {mode}"
            )
        self.tracking = mode == _CAMERA_TRACKCOM
        self.initial_target = self._look_point(physics, cam)
        start = physics.data.cam_xpos[cam].copy()
        if self.tracking:
            start -= physics.data.subtree_com[1]
        r, azimuth, polar = _spherical(start)
        self.vel_scaling = r / 4.0  # the suite's speeds are for radius-4 cameras
        lo = np.array([max(r * (1 - self.zoom_in), 0.0), azimuth - self.delta, polar - self.delta])
        hi = np.array([r * (1 + self.zoom_out), azimuth + self.delta, polar + self.delta])
        if self.upper_quadrant:  # stay above the floor, on the camera's side of the scene
            lo[1], hi[1] = max(lo[1], -math.pi), min(hi[1], 0.0)
            lo[2], hi[2] = max(lo[2], 0.0), min(hi[2], math.pi / 2)
        self.lo, self.hi = lo, hi
        azimuth, polar = rng.uniform(lo[1], hi[1]), rng.uniform(lo[2], hi[2])
        self.position = np.array([rng.uniform(lo[0], hi[0]), azimuth, polar])
        self.roll = rng.uniform(-self.delta, self.delta)
        vel = rng.standard_normal(3)
        self.vel = vel / np.linalg.norm(vel) * rng.uniform(0.0, self.max_vel)
        self.roll_vel = rng.uniform(-self.max_roll_vel, self.max_roll_vel)

    def walk(self, rng: np.random.Generator) -> None:
        self.vel = self.vel + rng.standard_normal(3) * self.vel_std * self.vel_scaling
        self.roll_vel += rng.standard_normal() * self.roll_std
        speed, limit = np.linalg.norm(self.vel), self.max_vel * self.vel_scaling
        if speed > limit:
            self.vel *= limit / speed
        self.roll_vel = float(np.clip(self.roll_vel, -self.max_roll_vel, self.max_roll_vel))
        before = _cartesian(self.position)
        self.position = np.clip(_spherical(before + self.vel), self.lo, self.hi)
        self.vel = _cartesian(self.position) - before  # velocity absorbed by the bounds is lost
        roll = float(np.clip(self.roll + self.roll_vel, -self.delta, self.delta))
        self.roll_vel, self.roll = roll - self.roll, roll

    def pose(self, physics: Any) -> tuple[np.ndarray, np.ndarray]:
        """The camera position and flat rotation matrix for the current walk state.

        Reads the physics' own camera pose (trackcom look-at point), so call it before `apply` writes.
        """
        eye = _cartesian(self.position)
        look = _look_at_level if self.upper_quadrant else _look_at_free
        if self.tracking:
            eye = eye + physics.data.subtree_com[1]
            rotation = look(self._look_point(physics, self.camera_id), eye)
        else:
            rotation = look(self.initial_target, eye)
        rotation = rotation @ _axis_angle(math.cos(self.roll), math.sin(self.roll), np.array([0.0, 0.0, 1.0]))
        return eye, rotation.reshape(-1)

    def apply(self, physics: Any, pose: tuple[np.ndarray, np.ndarray]) -> None:
        """Overwrite the camera pose in `physics.data` (render-only: the next physics step recomputes it)."""
        physics.data.cam_xpos[self.camera_id], physics.data.cam_xmat[self.camera_id] = pose


class DistractingCSMode(Mode):
    name = "distracting_cs"

    def __init__(
        self,
        domain: str,
        intensity: float,
        clips: list[Clip],
        *,
        action_repeat: int,
        image_size: int,
        camera_id: int,
    ) -> None:
        if domain not in GROUND_PLANE_ALPHA:
            raise ValueError(f"distracting_cs supports domains {sorted(GROUND_PLANE_ALPHA)}, not {domain!r}")
        if not clips:
            raise ValueError("distracting_cs: no background clips")
        self.domain = domain
        self.intensity = intensity
        self.clips = clips
        self.action_repeat = action_repeat
        self.sky_side = int(min(800, max(64, 2 * image_size)))
        self.camera = _Camera(camera_id, intensity, upper_quadrant=domain != "reacher")
        self.color_delta, self.color_step = intensity, 0.03 * intensity
        self.clip: Clip | None = None
        self._clip_index = -1
        self._rng: np.random.Generator | None = None

    def bind(self, physics: Any) -> None:
        model = physics.model
        self._sky = texture_id(physics, "skybox")
        self._grid = material_id(physics, "grid")
        self._sky_start = int(model.tex_adr[self._sky])
        original = model.mat_rgba[:, :3].copy()
        self._color_lo = np.clip(original - self.color_delta, 0.0, 1.0)
        self._color_hi = np.clip(original + self.color_delta, 0.0, 1.0)

    def on_reset(self, physics: Any, rng: np.random.Generator) -> None:
        self._rng = rng
        physics.model.mat_rgba[self._grid, 3] = GROUND_PLANE_ALPHA[self.domain]
        # Background: a random clip, start frame and direction.
        self._clip_index = int(rng.integers(len(self.clips)))
        self.clip = self.clips[self._clip_index]
        self._frames = self.clip.frames(self.sky_side, self.sky_side)
        self._frame = int(rng.integers(len(self._frames)))
        self._direction = int(rng.choice((-1, 1)))
        self._physics_steps = 0
        self._upload_frame(physics)
        # Camera: a random pose and velocity, then one walk step as the reference applies at reset.
        self.camera.reset(physics, rng)
        self.camera.walk(rng)
        # Colours: uniform in the box around the originals.
        self.colors = self._color_lo + rng.uniform(size=self._color_lo.shape) * (
            self._color_hi - self._color_lo
        )
        self._time = float(physics.data.time)
        self._pose: tuple[np.ndarray, np.ndarray] | None = None

    # The walk's state, restored as float64 arrays (lists of Python floats round-trip exactly).
    _CAMERA_ARRAYS = ("initial_target", "lo", "hi", "position", "vel")
    _CAMERA_FLOATS = ("vel_scaling", "roll", "roll_vel")

    def state_dict(self) -> dict[str, Any]:
        if self.clip is None:
            return {}
        camera = self.camera
        return {
            "clip": self._clip_index,
            "frame": self._frame,
            "direction": self._direction,
            "physics_steps": self._physics_steps,
            "colors": self.colors.tolist(),
            "time": self._time,
            "pose": None if self._pose is None else [self._pose[0].tolist(), self._pose[1].tolist()],
            "camera": {k: getattr(camera, k).tolist() for k in self._CAMERA_ARRAYS}
            | {k: float(getattr(camera, k)) for k in self._CAMERA_FLOATS}
            | {"tracking": bool(camera.tracking)},
        }

    def load_state_dict(self, state: dict[str, Any], physics: Any, rng: np.random.Generator) -> None:
        if not state:
            return
        self._rng = rng
        self._clip_index = state["clip"]
        self.clip = self.clips[self._clip_index]
        self._frames = self.clip.frames(self.sky_side, self.sky_side)
        self._frame, self._direction = state["frame"], state["direction"]
        self._physics_steps = state["physics_steps"]
        self.colors = np.array(state["colors"], dtype=np.float64)
        self._time = state["time"]
        pose = state["pose"]
        self._pose = None if pose is None else (np.array(pose[0]), np.array(pose[1]))
        for key, value in state["camera"].items():
            setattr(self.camera, key, np.array(value) if key in self._CAMERA_ARRAYS else value)
        self._upload_frame(physics)  # the texture data lives on the GL context too

    def _upload_frame(self, physics: Any) -> None:
        model, side = physics.model, self.sky_side
        # A square cube texture is drawn on all six faces, so one frame fills the whole sky.
        model.tex_width[self._sky] = model.tex_height[self._sky] = side
        model.tex_data[self._sky_start : self._sky_start + side * side * 3] = self._frames[
            self._frame
        ].reshape(-1)
        upload_texture(physics, self._sky)

    def _physics_step(self, rng: np.random.Generator) -> bool:
        """Advance every distraction by one physics step; True if the background frame changed."""
        self._physics_steps += 1
        moved = False
        if self._physics_steps % FRAME_EVERY == 0:
            frame = self._frame + self._direction
            if frame <= 0:
                frame, self._direction = 0, abs(self._direction)
            if frame >= len(self._frames):
                frame, self._direction = len(self._frames) - 1, -abs(self._direction)
            moved, self._frame = frame != self._frame, frame
        self.camera.walk(rng)
        noise = rng.standard_normal(self.colors.shape) * self.color_step
        self.colors = np.clip(self.colors + noise, self._color_lo, self._color_hi)
        return moved

    def before_render(self, physics: Any) -> None:
        if self._rng is None:
            raise RuntimeError("distracting_cs: a frame was rendered before the first reset")
        # Advance only when the physics has moved on (an agent step): the reset frame was drawn in
        # on_reset, and re-rendering a state (ModePixels.render_state) must not walk the distractions.
        time = float(physics.data.time)
        if time != self._time:
            self._time = time
            moved = [self._physics_step(self._rng) for _ in range(self.action_repeat)]
            if any(moved):
                self._upload_frame(physics)
        # The pose is derived from the physics' own camera pose, which `apply` overwrites: recompute it
        # only when the physics has recomputed its camera since (a step or a new state), not when the
        # same state is rendered again.
        cam, pose = self.camera.camera_id, self._pose
        if pose is None or not (
            np.array_equal(physics.data.cam_xpos[cam], pose[0])
            and np.array_equal(physics.data.cam_xmat[cam], pose[1])
        ):
            self._pose = pose = self.camera.pose(physics)
        physics.model.mat_rgba[:, :3] = self.colors
        self.camera.apply(physics, pose)
