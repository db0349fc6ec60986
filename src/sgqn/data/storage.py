"""The replay's storages, RAM or memory-mapped files, both reading row windows with `index_select`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, LazyTensorStorage


def _index_select_get(storage: LazyTensorStorage, index: Any) -> Any:
    """Rows at a long index tensor via `index_select` per field, or None for other indices.

    PyTorch's advanced indexing (what TensorDict indexing does) copies a uint8 frame batch element by
    element: ~12 ms for a batch of 128 windows of 84×84 frames on a 2-core CPU, against ~1 ms for
    `index_select`'s row copies. Same values (pinned by a test); on memory-mapped fields it returns
    plain tensors.
    """
    if not (isinstance(index, torch.Tensor) and index.dtype == torch.long and storage.initialized):
        return None
    flat = index.reshape(-1)
    return storage._storage.apply(
        lambda t: t.index_select(0, flat).unflatten(0, index.shape), batch_size=index.shape
    )


class GatherStorage(LazyTensorStorage):
    """`LazyTensorStorage` (RAM) whose reads by an index tensor use `index_select` on each field."""

    def get(self, index: Any) -> Any:
        rows = _index_select_get(self, index)
        return super().get(index) if rows is None else rows


class GatherMemmapStorage(LazyMemmapStorage):
    """`LazyMemmapStorage` (files in `scratch_dir`) with `GatherStorage`'s fast reads.

    The files are allocated in full when created: TorchRL's are sparse, and a write into a sparse
    memory map on a full disk kills the process with SIGBUS instead of raising.
    """

    def __init__(self, max_size: int, scratch_dir: str | Path) -> None:
        # existsok: a fresh run overwrites the files of an earlier one in the same folder.
        super().__init__(max_size, scratch_dir=scratch_dir, existsok=True, auto_cleanup=False)

    def get(self, index: Any) -> Any:
        rows = _index_select_get(self, index)
        return super().get(index) if rows is None else rows

    def _init_standard(self, data: Any) -> None:
        super()._init_standard(data)
        for path in self.files():
            _reserve(path)

    def files(self) -> list[Path]:
        """The memory-mapped field files (empty before the first write)."""
        if not self.initialized:
            return []
        leaves = self._storage.values(include_nested=True, leaves_only=True)
        return [Path(t.filename) for t in leaves]

    def flush(self) -> None:
        """fsync every field file. Rows written through the memory map already survive the process
        (a `kill -9`) in the page cache; this makes them survive the machine too."""
        for path in self.files():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def reopen(self, length: int) -> None:
        """Map the field files already in `scratch_dir` (as TorchRL's `loads` does for its own folder)."""
        folder = Path(self.scratch_dir)
        if not (folder / "meta.json").exists():
            raise FileNotFoundError(
                f"no replay files in {folder}: a disk replay resumes from the memory-mapped files its run "
                "wrote there"
            )
        storage = TensorDict.load_memmap(folder)
        if storage.shape[0] != self.max_size:
            raise ValueError(
                f"the replay files in {folder} hold {storage.shape[0]:,} rows, not {self.max_size:,}"
            )
        self._storage, self.initialized, self._len = storage, True, length


def _reserve(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError:  # file systems without fallocate keep the sparse file
        pass
    finally:
        os.close(fd)
