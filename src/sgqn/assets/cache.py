"""Decoded-frame caches: a bounded in-process LRU in front of an optional on-disk `.npy` cache.

Decoding and resizing a clip is the only expensive step of a video test mode (~1 s for a DMC-GB
`video_hard` clip); it happens once per (file, size) and machine. On disk the arrays are memory-mapped
back, so a hundred cached clips cost page cache, not process memory.

The disk cache lives in `$SGQN_CACHE_DIR`, else `$XDG_CACHE_HOME/sgqn`, else `~/.cache/sgqn`;
`SGQN_CACHE_DIR=off` (or empty) keeps everything in memory.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

log = logging.getLogger("sgqn.assets")

_MEMORY_BUDGET = 1 << 30  # bytes of *in-memory* (not memory-mapped) arrays kept by the LRU


def cache_dir() -> Path | None:
    """The on-disk cache folder, or None when disabled."""
    configured = os.environ.get("SGQN_CACHE_DIR")
    if configured is not None:
        if configured.strip().lower() in ("", "off", "0", "none"):
            return None
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "sgqn"


def _owned_bytes(array: np.ndarray) -> int:
    return 0 if isinstance(array, np.memmap) else array.nbytes


class _LRU:
    """Arrays by key, evicting the least recently used in-memory ones past the byte budget."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._items: collections.OrderedDict[Hashable, np.ndarray] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Hashable, array: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = array
            self._bytes += _owned_bytes(array)
            while self._bytes > self._budget and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= _owned_bytes(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_memory = _LRU(_MEMORY_BUDGET)


def clear_memory_cache() -> None:
    """Drop every in-process cached array (the disk cache is kept)."""
    _memory.clear()


def cached_array(kind: str, key: tuple[Hashable, ...], build: Callable[[], np.ndarray]) -> np.ndarray:
    """`build()`'s result, computed at most once per `key` (per process, and per machine if on disk).

    `key` must identify the content completely (file path, its mtime and size, output size, method
    version). Returned arrays are shared: treat them as read-only (the disk-backed ones are).
    """
    full_key = (kind, *key)
    hit = _memory.get(full_key)
    if hit is not None:
        return hit
    folder = cache_dir()
    path = None
    if folder is not None:
        digest = hashlib.sha256(repr(full_key).encode()).hexdigest()[:32]
        path = folder / kind / f"{digest}.npy"
        if path.exists():
            try:
                array = np.load(path, mmap_mode="r")
                _memory.put(full_key, array)
                return array
            except (OSError, ValueError) as err:  # a damaged entry is rebuilt, never trusted
                log.warning("ignoring unreadable cache entry %s (%s)", path, err)
    array = build()
    if path is not None:
        array = _store(path, array)
    _memory.put(full_key, array)
    return array


def _store(path: Path, array: np.ndarray) -> np.ndarray:
    """Write `array` to `path` and return it memory-mapped; on failure, keep the in-memory array."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name then renamed: a concurrent reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
            tmp = Path(file.name)
            np.save(file, array)
        os.replace(tmp, path)
        return np.load(path, mmap_mode="r")
    except OSError as err:
        log.warning("cannot write cache entry %s (%s); keeping it in memory", path, err)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        return array


def file_key(path: Path) -> tuple[str, int, int]:
    """Identity of a file's content for cache keys: absolute path, mtime (ns), size."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size
