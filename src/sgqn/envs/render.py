"""OpenGL backend selection and render quality for MuJoCo's offscreen renderer.

`select_gl_backend()` must run before `dm_control` is imported: dm_control reads `MUJOCO_GL` once, at
import time, and cannot switch afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal

_CANDIDATES = ("egl", "osmesa")
_DEBIAN_HINT = (
    "MuJoCo could not create an OpenGL context with any backend ({tried}). Install a headless GL "
    "implementation, e.g. as root on Debian/Ubuntu:\n"
    "  apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri      # EGL (preferred)\n"
    "  apt-get install -y libosmesa6                               # OSMesa (fallback)\n"
    "or set MUJOCO_GL yourself to a backend that works on this machine."
)
_PROBE = (
    "import os, sys; os.environ['MUJOCO_GL'] = sys.argv[1]\n"
    "from dm_control import mujoco\n"
    "p = mujoco.Physics.from_xml_string('<mujoco><worldbody><geom size=\"1\"/></worldbody></mujoco>')\n"
    "p.render(8, 8)\n"
)


def _backend_works(backend: str) -> bool:
    # Probed in a subprocess: a failed GL initialisation can leave the current process unusable.
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, backend], capture_output=True, timeout=120, check=False
    )
    return result.returncode == 0


def select_gl_backend() -> str:
    """Set `MUJOCO_GL` (a user's own setting wins) and return it; raise with install hints if none works."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if "dm_control.mujoco" in sys.modules:  # too late to choose: dm_control already picked one
        return os.environ.get("MUJOCO_GL", "")
    for backend in _CANDIDATES:
        if _backend_works(backend):
            os.environ["MUJOCO_GL"] = backend
            if backend == "osmesa":
                os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
            return backend
    raise RuntimeError(_DEBIAN_HINT.format(tried=", ".join(_CANDIDATES)))


def release_gl_context() -> None:
    """Unbind the MuJoCo OpenGL context current on the calling thread, so another thread can render with it.

    dm_control's EGL renderer keeps a context current on the thread that last rendered with it and refuses
    to render with it from another thread: an env stepped by a collecting thread (overlapped collection)
    is handed over with this, on the thread that gives it up. A no-op when the thread holds none; only
    EGL (the default here) is supported.
    """
    if "dm_control._render.base" not in sys.modules:
        return  # nothing rendered yet in this process
    import threading

    from dm_control._render import base

    thread = threading.current_thread()
    context = base._CURRENT_CONTEXT_FOR_THREAD.get(thread)
    if context is None:
        return
    if os.environ.get("MUJOCO_GL") != "egl":
        raise RuntimeError("handing an env to another thread (overlap_collection) needs MUJOCO_GL=egl")
    from dm_control._render.pyopengl import egl_renderer
    from OpenGL import EGL

    EGL.eglMakeCurrent(egl_renderer.EGL_DISPLAY, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)
    del base._CURRENT_THREAD_FOR_CONTEXT[context]
    del base._CURRENT_CONTEXT_FOR_THREAD[thread]


@dataclass(frozen=True)
class RenderQuality:
    """MuJoCo visual-quality settings applied to a model before its first render.

    `reference` keeps MuJoCo's defaults (4× multisampling, 2048² shadow map), as DMC-GB renders.
    `fast` turns multisampling off, shrinks the shadow map and tessellates spheres/capsules more coarsely
    (the renderer draws the scene twice, for the shadow map and the image, so triangle count dominates
    on a CPU rasteriser): about 3-4× more frames/s at 84×84 for a mean absolute pixel difference of about
    one grey level (docs/performance.md).
    """

    offsamples: int | None = None
    shadowsize: int | None = None
    numslices: int | None = None
    numstacks: int | None = None

    @classmethod
    def named(cls, name: Literal["reference", "fast"]) -> RenderQuality:
        presets = {"reference": cls(), "fast": cls(offsamples=0, shadowsize=256, numslices=12, numstacks=6)}
        if name not in presets:
            raise ValueError(f"unknown render quality {name!r}; valid: {sorted(presets)}")
        return presets[name]

    def apply(self, physics: Any) -> None:
        # Must run before the physics' GL context exists: offscreen buffers are sized at context creation.
        quality = physics.model.vis.quality
        if self.offsamples is not None:
            quality.offsamples = self.offsamples
        if self.shadowsize is not None:
            quality.shadowsize = self.shadowsize
        if self.numslices is not None:
            quality.numslices = self.numslices
        if self.numstacks is not None:
            quality.numstacks = self.numstacks
