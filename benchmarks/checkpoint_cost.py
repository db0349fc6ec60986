"""Cost of checkpointing the replay: RAM storage (rows inside the checkpoint) vs disk (metadata only).

Fills a replay with `--rows` random 84×84 frames (written straight into the TorchRL buffer in big chunks,
skipping the env), then times a checkpoint as the trainer takes it (`FrameReplay.state_dict()` +
`torch.save`), the size of the file, and a restore (`torch.load` + `load_state_dict` into a fresh replay
+ one sampled batch). For disk storage it also times a second checkpoint after `--more` new rows: the
first flush writes every dirty page of the files, later ones only the rows written since.

    python benchmarks/checkpoint_cost.py --rows 100000 --folder /path/on/the/training/disk
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tensordict import TensorDict

from sgqn.data.replay import FrameReplay
from sgqn.data.rows import FRAME, ROW, STEP, VALID

FRAME_SHAPE, ACTION_DIM, FRAME_STACK, BATCH, EPISODE = (3, 84, 84), 6, 3, 128, 250


def rows(first: int, n: int) -> TensorDict:
    ids = torch.arange(first, first + n)
    return TensorDict(
        {
            FRAME: torch.randint(0, 256, (n, *FRAME_SHAPE), dtype=torch.uint8),
            "action": torch.rand(n, ACTION_DIM) * 2 - 1,
            "reward": torch.rand(n, 1),
            "terminated": torch.zeros(n, 1, dtype=torch.bool),
            STEP: (ids % EPISODE).to(torch.int32),
            VALID: torch.ones(n, dtype=torch.bool),
            ROW: ids,
        },
        batch_size=[n],
    )


def fill(replay: FrameReplay, n: int, chunk: int = 5000) -> None:
    for first in range(replay.rows_written, replay.rows_written + n, chunk):
        size = min(chunk, replay.rows_written + n - first)
        replay.buffer.extend(rows(first, size))
    replay.rows_written += n
    replay.sampler.rows_written = replay.rows_written


def make(storage: str, capacity: int, folder: Path) -> FrameReplay:
    scratch = folder / "replay" if storage == "disk" else None
    return FrameReplay(
        capacity, FRAME_STACK, BATCH, FRAME_SHAPE, ACTION_DIM, storage=storage, scratch_dir=scratch
    )


def checkpoint(replay: FrameReplay, path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    torch.save({"replay": replay.state_dict()}, path)
    return time.perf_counter() - start, path.stat().st_size


def measure(storage: str, n: int, more: int, folder: Path) -> None:
    capacity = n + more
    replay = make(storage, capacity, folder)
    start = time.perf_counter()
    fill(replay, n)
    filled = time.perf_counter() - start
    path = folder / f"{storage}.ckpt"
    seconds, size = checkpoint(replay, path)
    print(f"{storage:6s}: filled {n:,} rows in {filled:.1f} s; checkpoint {seconds:.2f} s, {size:,} bytes")
    if storage == "disk":
        fill(replay, more)
        seconds, size = checkpoint(replay, path)
        print(f"{'':6s}  after {more:,} more rows: checkpoint {seconds:.2f} s, {size:,} bytes")
    del replay
    gc.collect()

    start = time.perf_counter()
    state = torch.load(path, weights_only=False)["replay"]
    loaded = time.perf_counter() - start
    restored = make(storage, capacity, folder)
    restored.load_state_dict(state)
    ready = time.perf_counter() - start
    restored.sample()
    sampled = time.perf_counter() - start
    print(
        f"{'':6s}  restore: torch.load {loaded:.2f} s, + load_state_dict {ready:.2f} s, "
        f"+ first batch {sampled:.2f} s"
    )
    del restored, state
    gc.collect()
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--more", type=int, default=10_000, help="rows written before a second checkpoint")
    parser.add_argument("--folder", type=Path, default=None, help="where files go (default: a temp folder)")
    parser.add_argument("--storage", choices=["memory", "disk", "both"], default="both")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(dir=args.folder))
    try:
        for storage in ("memory", "disk") if args.storage == "both" else (args.storage,):
            measure(storage, args.rows, args.more, folder)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
