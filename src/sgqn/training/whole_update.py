"""The whole agent update as one function per due pattern (`SpeedOptions.graph_update`, `compile_update`).

An update's operations depend on its agent step only through which optional steps are due (`Due`), so
one function per pattern, holding every loss, backward pass, Adam step and the target EMA, computes any
update of that pattern. That function is what LeanRL hands to `torch.compile` (whole) and to tensordict's
`CudaGraphModule` (on a GPU): after its warm-up calls, each update is one CUDA graph replay instead of a
few thousand kernel launches from Python. The maths is the agent's `update`, unchanged.

What a replay cannot do, the caller does around it: the update index, the non-finite check and
Lightning's optimizer-step count (`Optimizers.took_step` is told what each replay stepped); the agent step
a learner reads beyond its due rules is written into its buffers by `Agent.due`, before. Replays run no
Python, so nothing inside may read a tensor back to the host; the optimizers must be `capturable` Adams
on a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from tensordict import TensorDictBase
from torch import Tensor

from sgqn.algorithms.agent import Agent, Due, Metrics, Optimizers

Run = Callable[[TensorDictBase], tuple[Metrics, Metrics]]


@dataclass
class _Pattern:
    run: Run
    # loss name → the optimizer that stepped on it (filled by the first call, which runs Python)
    optimizer_of: dict[str, str] = field(default_factory=dict)
    calls: int = 0


class WholeUpdates:
    """`agent.update` per due pattern, optionally `torch.compile`d and captured as CUDA graphs; called as
    `agent.update` is, `(batch, opt, due) -> metrics`.

    Args:
        agent: the agent whose `update` this runs.
        optimizers: its optimizers by name (plain `torch.optim` ones, not Lightning's wrappers).
        compile: `torch.compile` each pattern's whole update (mode `compile_mode`).
        cuda_graphs: capture each pattern's update as a CUDA graph at its `warmup`-th call, after eager
            ones (tensordict's `CudaGraphModule`; a GPU only).
        before_capture: called right before each capture. A capture fails if another thread uses the
            GPU meanwhile: this stops such threads (an overlapped collector: `EnvStream.pause`).
    """

    def __init__(
        self,
        agent: Agent,
        optimizers: Mapping[str, torch.optim.Optimizer],
        *,
        compile: bool = False,
        compile_mode: str | None = None,
        cuda_graphs: bool = False,
        warmup: int = 2,
        before_capture: Callable[[], None] | None = None,
    ) -> None:
        self.agent, self.optimizers = agent, optimizers
        self.compile, self.compile_mode = compile, compile_mode
        self.cuda_graphs, self.warmup, self.before_capture = cuda_graphs, warmup, before_capture
        self.patterns: dict[Due, _Pattern] = {}

    def __call__(self, batch: TensorDictBase, opt: Optimizers, due: Due) -> Metrics:
        """One update; each optimizer it stepped is reported to `opt.took_step` with its losses (detached), in order."""
        pattern = self.patterns.get(due)
        if pattern is None:
            pattern = self.patterns[due] = self._record(due)
        if self.cuda_graphs and pattern.calls == self.warmup - 1 and self.before_capture is not None:
            self.before_capture()
        pattern.calls += 1
        metrics, losses = pattern.run(batch)
        by_optimizer: dict[str, dict[str, Tensor]] = {}
        for name, loss in losses.items():
            by_optimizer.setdefault(pattern.optimizer_of[name], {})[name] = loss
        for optimizer, named in by_optimizer.items():
            opt.took_step(optimizer, **named)
        return metrics

    def _record(self, due: Due) -> _Pattern:
        optimizer_of: dict[str, str] = {}

        def whole(batch: TensorDictBase) -> tuple[Metrics, Metrics]:
            # Plain steps: zero_grad → backward → step, noting each loss and (on the first, Python call)
            # which optimizer stepped it.
            steps = Optimizers(self.optimizers, optimizer_of=optimizer_of)
            return self.agent.update(batch, steps, due), steps.stepped

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
