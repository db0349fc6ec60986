"""`SpeedOptions.graph_update`: the whole agent update as one function per due pattern.

An update's operations depend on its agent step only through which optional steps are due (the
learner's actor and target steps, the guidance's own): `ValueLearner.due_pattern`. So one function per
pattern, holding every loss, backward pass, Adam step and the target EMA, computes any update of that
pattern. That function is what LeanRL hands to `torch.compile` (whole, with `compile`) and to
tensordict's `CudaGraphModule` (on a GPU): after its warm-up calls, each update is one CUDA graph replay
instead of a few thousand kernel launches from Python. The maths is `ValueLearner.update`, unchanged.

What a replay cannot do, the caller does around it: the update index and the non-finite check
(`SGQNModule.update`), and Lightning's optimizer-step count (`stepped` names the optimizers the pattern
steps). Replays also do not run Python, so nothing inside may read a tensor back to the host; the
optimizers must be `capturable` Adams on a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from tensordict import TensorDictBase
from torch import Tensor

from sgqn.objectives.learner import Metrics, ValueLearner, optimizer_step

Run = Callable[[TensorDictBase], tuple[Metrics, Metrics]]


@dataclass
class _Pattern:
    run: Run
    # loss name → the optimizer that stepped on it (filled by the first call, which runs Python)
    optimizer_of: dict[str, str] = field(default_factory=dict)
    calls: int = 0


class WholeUpdates:
    """`learner.update` per due pattern, optionally `torch.compile`d and captured as CUDA graphs.

    Args:
        learner: the value learner (with its guidance) whose `recordable_update` this runs.
        optimizers: its optimizers by name (plain `torch.optim` ones, not Lightning's wrappers).
        compile: `torch.compile` each pattern's whole update (mode `compile_mode`).
        cuda_graphs: capture each pattern's update as a CUDA graph at its `warmup`-th call, after eager
            ones (tensordict's `CudaGraphModule`; a GPU only).
        before_capture: called right before each capture. A capture fails if another thread uses the
            GPU meanwhile: this stops such threads (an overlapped collector: `EnvStream.pause`).
    """

    def __init__(
        self,
        learner: ValueLearner,
        optimizers: Mapping[str, torch.optim.Optimizer],
        *,
        compile: bool = False,
        compile_mode: str | None = None,
        cuda_graphs: bool = False,
        warmup: int = 2,
        before_capture: Callable[[], None] | None = None,
    ) -> None:
        self.learner, self.step = learner, optimizer_step(optimizers)
        self.compile, self.compile_mode = compile, compile_mode
        self.cuda_graphs, self.warmup, self.before_capture = cuda_graphs, warmup, before_capture
        self.patterns: dict[tuple[bool, ...], _Pattern] = {}

    def __call__(self, batch: TensorDictBase, due_at: int) -> tuple[Metrics, Metrics, list[str]]:
        """One update at agent step `due_at`: its metrics, the losses it optimised (detached) and the
        names of the optimizers it stepped, in order."""
        self.learner.at_step(due_at)  # the buffers a replay reads (outside it: Python is not replayed)
        key = self.learner.due_pattern(due_at)
        pattern = self.patterns.get(key)
        if pattern is None:
            pattern = self.patterns[key] = self._record(due_at)
        if self.cuda_graphs and pattern.calls == self.warmup - 1 and self.before_capture is not None:
            self.before_capture()
        pattern.calls += 1
        metrics, losses = pattern.run(batch)
        return metrics, losses, [pattern.optimizer_of[name] for name in losses]

    def _record(self, due_at: int) -> _Pattern:
        # `due_at` is a representative of its pattern: the update reads it only through the due rules.
        optimizer_of: dict[str, str] = {}

        def whole(batch: TensorDictBase) -> tuple[Metrics, Metrics]:
            losses: Metrics = {}

            def step(optimizer: str, name: str, loss: Tensor) -> None:
                losses[name] = loss.detach()
                optimizer_of[name] = optimizer  # the same every call: harmless when replayed
                self.step(optimizer, name, loss)

            return self.learner.recordable_update(batch, due_at, step), losses

        run: Run = whole
        if self.compile:
            run = torch.compile(whole, mode=self.compile_mode, dynamic=False)  # type: ignore[assignment]
        if self.cuda_graphs:
            from tensordict.nn import CudaGraphModule

            with warnings.catch_warnings():
                # It takes TensorDicts out of torch's pytree registry, process-wide, and says so; nothing
                # of ours relies on that registration (the suites pass after it).
                warnings.filterwarnings("ignore", "Tensordict is registered in PyTree")
                run = CudaGraphModule(run, warmup=self.warmup)  # type: ignore[assignment]
        return _Pattern(run, optimizer_of)


__all__ = ["WholeUpdates"]
