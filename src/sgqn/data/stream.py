"""The stream of batches the trainer pulls: collector → replay → the updates the schedule asks for.

`EnvStream` is an `IterableDataset` iterated in the trainer's process: each iteration steps a TorchRL
`Collector` by one agent step (the policy is the LightningModule's own actor, so its weights are
always current), writes the transition to the replay buffer and yields the sampled batches that the
update schedule (`updates_due`) asks for. The run length is counted in *agent steps*, never in optimizer
steps. `DMCDataModule` (`sgqn.data.datamodule`) builds it and checkpoints it for an exact resume.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import IterableDataset
from torchrl.collectors import Collector

from sgqn.data.replay import FrameReplay
from sgqn.data.settings import UpdateSchedule
from sgqn.envs.render import release_gl_context


@dataclass
class StreamStats:
    """What the stream has done so far; read by the progress callback and saved for resume."""

    agent_steps: int = 0
    updates: int = 0
    episodes: int = 0
    last_episode_return: float = float("nan")
    episode_return: float = 0.0
    steps_per_s: float = float("nan")  # agent steps per second over the last `window` steps
    _window_start: float = field(default_factory=time.perf_counter)
    _window_steps: int = 0


def updates_due(
    agent_steps: int, init_steps: int, updates_per_step: int, update_every_steps: int = 1, burst: bool = True
) -> int:
    """Gradient updates after collecting agent step number `agent_steps` (1-based).

    None while the buffer warms up with random actions; at the switch, `init_steps` updates at once (as
    the SAC / SVEA / SGQN references do; `burst=False`: none, as DrQ-v2); then `updates_per_step` at
    every `update_every_steps`-th agent step (DrQ-v2: one update every 2 steps).
    """
    if agent_steps < init_steps:
        return 0
    if agent_steps == init_steps and burst:
        return init_steps * updates_per_step
    return updates_per_step if agent_steps % update_every_steps == 0 else 0


class EnvStream(IterableDataset):
    """Steps the collector and yields replay batches until `schedule.num_agent_steps` agent steps are
    collected; `None` for an agent step with no update due (the random warm-up)."""

    def __init__(
        self,
        collector: Collector,
        replay: FrameReplay,
        schedule: UpdateSchedule,
        *,
        stats: StreamStats,
        fps_window: int = 100,
        sync_policy: Callable[[], None] | None = None,
    ) -> None:
        self.collector, self.replay, self.schedule = collector, replay, schedule
        self.stats, self.fps_window = stats, fps_window
        self.pending = 0  # batches due at the latest step and not yet yielded
        # Overlapped collection: a thread steps the collector (acting with a policy snapshot that
        # `sync_policy` refreshes every `policy_sync_every` updates) one agent step ahead of learning.
        self.sync_policy = sync_policy
        self.prefetched: list[TensorDictBase] = []  # collected, not yet in the replay (checkpointed)
        self._queue: queue.Queue[TensorDictBase] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _record(self, transitions: TensorDictBase) -> None:
        stats = self.stats
        for reward, done in zip(
            transitions["next", "reward"].reshape(-1).tolist(),
            transitions["next", "done"].reshape(-1).tolist(),
            strict=True,
        ):
            stats.agent_steps += 1
            stats._window_steps += 1
            stats.episode_return += reward
            if done:
                stats.episodes += 1
                stats.last_episode_return, stats.episode_return = stats.episode_return, 0.0
        if stats._window_steps >= self.fps_window:
            now = time.perf_counter()
            stats.steps_per_s = stats._window_steps / (now - stats._window_start)
            stats._window_start, stats._window_steps = now, 0

    def _sample(self) -> TensorDictBase:
        # Called when the previous update has finished: the collector's snapshot may take its weights.
        schedule = self.schedule
        if (
            schedule.overlap_collection
            and self.sync_policy is not None
            and self.stats.updates % schedule.policy_sync_every == 0
        ):
            self.sync_policy()
        self.pending -= 1
        self.stats.updates += 1
        return self.replay.sample()

    # ------------------------------------------------------------------ overlapped collection

    def _produce(self) -> None:
        # One intra-op thread for this thread's torch work (one observation's policy forward): a second
        # OpenMP team would spin against the learner's on the same cores (measured: docs/performance.md).
        torch.set_num_threads(1)
        try:
            for transitions in self.collector:
                self._queue.put(transitions)  # waits while the learner has not taken the previous step
                if self._stop.is_set():
                    return
        except BaseException as error:  # raised again in the learner's thread
            self._error = error
            self._queue.put(TensorDict())  # wakes the consumer
        finally:
            release_gl_context()  # the env's renderer goes back to whichever thread steps it next

    def _transitions(self) -> Iterator[TensorDictBase]:
        """The collector's agent steps: stepped here, or taken from the collecting thread."""
        if not self.schedule.overlap_collection:
            yield from self.collector
            return
        while True:
            if self.prefetched:  # steps collected before a `pause` (a checkpoint) and not yet learned from
                yield self.prefetched.pop(0)
                continue
            if self._thread is None:  # first step, or after a `pause`
                release_gl_context()  # the train env rendered here (its reset): hand it to the thread
                self._stop.clear()
                self._thread = threading.Thread(target=self._produce, name="sgqn-collector", daemon=True)
                self._thread.start()
            transitions = self._queue.get()
            if self._error is not None:
                raise self._error
            yield transitions

    def pause(self) -> None:
        """Stop the collecting thread after its current step; the steps it collected and the learner has
        not taken yet are kept in `prefetched` (a checkpoint then sees a consistent env and collector)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        while thread.is_alive() or not self._queue.empty():
            with contextlib.suppress(queue.Empty):  # (the thread may be mid-step: wait for its put)
                item = self._queue.get(timeout=0.1)
                if self._error is None:
                    self.prefetched.append(item)
        thread.join()

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[TensorDictBase | None]:
        while self.pending > 0:  # updates still due at the step a resumed run stopped at
            yield self._sample()
        if self.stats.agent_steps >= self.schedule.num_agent_steps:
            return
        try:
            yield from self._steps()
        finally:
            self.pause()

    def _steps(self) -> Iterator[TensorDictBase | None]:
        schedule = self.schedule
        for transitions in self._transitions():
            if self.stats.agent_steps >= schedule.num_agent_steps:
                return  # an overlapped step collected past the end of the run
            transitions = transitions.reshape(-1)
            self.replay.extend(transitions)
            before = self.stats.agent_steps
            self._record(transitions)
            self.pending = sum(
                updates_due(
                    step,
                    schedule.init_steps,
                    schedule.updates_per_step,
                    schedule.update_every_steps,
                    schedule.warmup_burst,
                )
                for step in range(before + 1, self.stats.agent_steps + 1)
            )
            if self.pending == 0:
                # No update due (the random warm-up): yield control anyway, so the trainer's callbacks
                # (progress, evaluation, checkpoints) see every agent step, the warm-up included.
                yield None
            while self.pending > 0:
                yield self._sample()
            if self.stats.agent_steps >= schedule.num_agent_steps:
                return

    def state_dict(self) -> dict[str, Any]:
        self.pause()  # restarted by the next iteration; nothing is lost
        prefetched = [{"data": t.to_dict(), "batch_size": list(t.batch_size)} for t in self.prefetched]
        return {"pending": self.pending, "prefetched": prefetched}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state["pending"]
        self.prefetched = [
            TensorDict(t["data"], batch_size=t["batch_size"]) for t in state.get("prefetched", [])
        ]


__all__ = ["EnvStream", "StreamStats", "updates_due"]
