"""Save a labelled PNG strip of one physics state as every DMC-GB mode renders it.

All modes share task, seed and actions, so the physics (hence the agent's pose) is identical in every
panel; only the appearance differs. Look at it after touching a mode.

    python benchmarks/mode_strip.py                                   # embedded default data
    python benchmarks/mode_strip.py --dmcgb-root ../shared/dmcgb --out /tmp/strip.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sgqn.envs import make_env

DEFAULT_OUT = Path(__file__).parent / "out" / "mode_strip.png"


def render_modes(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    panels = [(mode, None) for mode in ("train", "color_easy", "color_hard", "video_easy", "video_hard")]
    panels += [("distracting_cs", intensity) for intensity in args.intensities]
    data = {"dmcgb_root": args.dmcgb_root, "davis_root": args.davis_root}
    frames = []
    for mode, intensity in panels:
        env = make_env(
            args.task,
            image_size=args.image_size,
            frame_stack=1,
            render_quality=args.render_quality,
            mode=mode,
            intensity=intensity,
            data=data,
            seed=args.seed,
        )
        actions = torch.rand(
            args.steps, *env.action_spec.shape, generator=torch.Generator().manual_seed(args.seed)
        )
        td = env.reset()
        for action in actions:
            td["action"] = action * 2 - 1
            td = env.step(td)["next"]
        label = mode if intensity is None else f"{mode} {intensity}"
        frames.append((label, td["pixels"].permute(1, 2, 0).numpy()))
        env.close()
    return frames


def compose(frames: list[tuple[str, np.ndarray]], scale: int) -> Image.Image:
    side = frames[0][1].shape[0] * scale
    label_h, gap = 16, 4
    strip = Image.new("RGB", (len(frames) * (side + gap) - gap, side + label_h), "white")
    draw = ImageDraw.Draw(strip)
    for i, (label, frame) in enumerate(frames):
        x = i * (side + gap)
        strip.paste(Image.fromarray(frame).resize((side, side), Image.Resampling.NEAREST), (x, label_h))
        draw.text((x + 3, 2), label, fill="black")
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="walker_walk")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=15, help="agent steps before the snapshot")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of each panel")
    parser.add_argument("--render-quality", choices=("fast", "reference"), default="reference")
    parser.add_argument(
        "--intensities", type=float, nargs="*", default=[0.1, 0.5], help="distracting_cs panels"
    )
    parser.add_argument("--dmcgb-root", default=None)
    parser.add_argument("--davis-root", default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    strip = compose(render_modes(args), args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(args.out)
    print(f"saved {args.out} ({strip.width}x{strip.height})")


if __name__ == "__main__":
    main()
