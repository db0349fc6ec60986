"""The device-moving paths without a GPU: the module on the `meta` device stands in for a CUDA one.

Like CUDA, `meta` refuses to mix with CPU tensors in an op ("Tensor on device meta is not on the expected
device cpu"), and it has no data, so any host sync (`.item()`, `bool(...)`) also fails. A tensor created on
the host inside an update, an observation not moved to the weights, an action not brought back to the env:
each raises here as it would on a GPU. What `meta` lets through, host data entering the update (a tensor
built on the device from Python data, a host tensor copied over or fed to a device op), `_NoHostData`
records: a CUDA graph could not capture the copy or would replay a stale value. Copies back to the host go
through `sgqn.training.devices.to_host`, which the tests replace by zeros of the right shape (a meta tensor holds no
values to copy).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tensordict import TensorDict
from torch.overrides import TorchFunctionMode

from sgqn.algorithms import ALGORITHMS
from sgqn.algorithms.agent import Optimizers, adam_optimizers
from sgqn.data.datamodule import DMCDataModule
from sgqn.data.replay import FrameReplay
from sgqn.evaluation.attribution import saliency_maps
from sgqn.evaluation.viz import saliency_grid
from sgqn.training import devices
from sgqn.training.module import AgentModule
from test_module import SIZE, _batch, _module

META = torch.device("meta")


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def to_host(tensor: torch.Tensor) -> torch.Tensor:
        return torch.zeros(tensor.shape, dtype=tensor.dtype) if tensor.is_meta else tensor.cpu()

    monkeypatch.setattr(devices, "to_host", to_host)


def _on_meta(algorithm: str) -> AgentModule:
    return _module(algorithm).to(META)


class _NoHostData(TorchFunctionMode):
    """Records host data entering device computations, which `meta` lets through: a tensor built from
    Python data on the device (`torch.tensor(..., device=...)`: a host-to-device copy at every call) and
    a host tensor copied to the device or fed to an op with device tensors (its value read at launch).
    A CUDA graph cannot capture the copies and would replay a stale value for the rest."""

    MADE_FROM_DATA = frozenset({torch.tensor, torch.as_tensor, torch.Tensor.new_tensor})

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        out = func(*args, **kwargs)
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_host = [t for t in tensors if t.device.type == "cpu"]
        on_device = [t for t in tensors if t.device.type != "cpu"]
        if isinstance(out, torch.Tensor) and out.device.type != "cpu":
            if func in self.MADE_FROM_DATA:
                self.found.append(f"{name} built on {out.device} from host data")
            elif on_host:
                self.found.append(f"{name} brought a host tensor to {out.device}")
        elif on_host and on_device:
            self.found.append(f"{name} mixed host and device tensors")
        return out


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_the_whole_update_runs_on_the_module_device_with_no_host_sync(algorithm: str) -> None:
    module = _on_meta(algorithm)
    opt, stepped = Optimizers(adam_optimizers(module.agent)), []
    batch = devices.to_device(_batch(), META)  # the replay's host batch, moved as training_step does
    assert all(t.device == META for t in batch.values(include_nested=True, leaves_only=True))
    for due_at in (0, 1):  # every frequency due, then only the critic's
        due = module.agent.due(due_at)  # outside the update, as training_step does
        opt.stepped = {}
        with _NoHostData() as host_data:
            metrics = module.agent.update(batch, opt, due)
        assert not host_data.found, host_data.found
        assert metrics and all(v.device in (META, devices.HOST) for v in metrics.values())
        stepped += list(opt.stepped.items())
    for name, loss in stepped:
        assert loss.device == META, f"{name} was computed on {loss.device}"
    names = [name for name, _ in stepped]
    assert "loss_critic" in names and "loss_actor" in names
    if ALGORITHMS[algorithm][1] == "sgqn":
        assert "loss_attribution" in names
    assert {p.device for p in module.parameters()} == {META}


def test_overlay_images_set_after_the_move_land_on_the_module_device() -> None:
    module = _on_meta("svea")
    module.set_overlay_images(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8))
    overlay = module.agent.overlay
    assert overlay is not None and overlay.images is not None and overlay.images.device == META


@pytest.mark.parametrize("algorithm", ["sgqn", "drqv2"])
@pytest.mark.parametrize("deterministic", [True, False])
def test_the_policy_moves_env_pixels_to_the_weights_and_actions_back(
    fake_host: None, algorithm: str, deterministic: bool
) -> None:
    module = _on_meta(algorithm)
    seen: list[torch.device] = []
    module.actor.register_forward_pre_hook(lambda _, args: seen.append(args[0].device))
    policy = module.policy_module(deterministic=deterministic)
    pixels = torch.randint(0, 256, (3, 9, SIZE, SIZE), dtype=torch.uint8)
    action = policy(TensorDict({"pixels": pixels}, batch_size=[3]))["action"]
    assert seen == [META]  # the actor ran where its weights are
    assert action.device == devices.HOST and action.shape == (3, 2)  # and the env got a host action


def test_saliency_maps_from_device_weights_come_back_to_the_host(fake_host: None) -> None:
    module = _on_meta("sgqn")
    obs = torch.randint(0, 256, (2, 9, SIZE, SIZE), dtype=torch.uint8)
    maps = saliency_maps(module, obs)
    assert all(v is not None and v.device == devices.HOST for v in maps.values())
    grid = saliency_grid(
        obs.float(), maps["attribution"], maps["mask"], maps["masked_obs"], maps["predicted_prob"]
    )
    assert grid.ndim == 3 and grid.shape[-1] == 3


def test_an_evaluation_rollout_with_device_weights(fake_host: None) -> None:
    from sgqn.evaluation.episodes import run_episodes

    dm = DMCDataModule(task="cartpole_balance", image_size=SIZE, render_quality="fast", seed=3)
    module = _module("sgqn", observation_shape=dm.observation_shape, action_dim=dm.action_dim).to(META)
    returns, rollout = run_episodes(dm.make_env(seed=7), module.policy_module(deterministic=True), 1)
    assert len(returns) == 1 and rollout["action"].device == devices.HOST
    assert rollout.shape[0] == 125  # a whole episode (1,000 physics steps at action repeat 8)


def test_drqv2_exploration_stddev_on_device_equals_the_schedule() -> None:
    loss: Any = _module("drqv2").agent
    for step in (0, 1, 777, 50_000, 99_999, 100_000, 250_000):
        loss.agent_step.fill_(step)
        assert loss.exploration_stddev().item() == loss.stddev(step)
        mean = torch.zeros(4, 2)
        torch.manual_seed(5)
        on_device = mean + torch.randn_like(mean) * loss.exploration_stddev()
        torch.manual_seed(5)
        as_float = mean + torch.randn_like(mean) * loss.stddev(step)
        assert torch.equal(on_device, as_float)


def test_the_replay_pins_its_batches_only_for_a_cuda_learner(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = DMCDataModule(
        task="cartpole_balance", image_size=SIZE, num_agent_steps=20, init_steps=10, batch_size=4
    )
    policy = _module("sac", observation_shape=dm.observation_shape, action_dim=dm.action_dim).policy_module(
        False
    )
    dm.build(policy, torch.device("cuda"))  # no CUDA needed to build: the storage stays on the host
    assert dm.replay is not None and dm.replay.pin_memory
    pinned: list[int] = []
    monkeypatch.setattr(TensorDict, "pin_memory", lambda self, *a, **k: pinned.append(1) or self)
    stream = iter(dm.stream)  # type: ignore[arg-type]
    batch = next(b for b in stream if b is not None)
    assert pinned and batch.device in (None, devices.HOST)
    assert not dm.build(policy, devices.HOST).replay.pin_memory  # type: ignore[union-attr]
    assert not FrameReplay(16, 3, 2, (3, SIZE, SIZE), 1).pin_memory


def test_the_update_index_is_counted_on_the_host_after_one_read() -> None:
    module = _module("sac")
    assert [module._next_update_index() for _ in range(3)] == [0, 1, 2]
    module.to(META)  # from here on a read of the buffer would fail: the index must not need one
    assert [module._next_update_index() for _ in range(2)] == [3, 4]
    restored = _module("sac")
    state = _module("sac").state_dict() | {"update_step": torch.tensor(7)}
    restored.load_state_dict(state)  # a checkpoint's buffer is read once, at the next update
    assert restored._next_update_index() == 7 and int(restored.update_step) == 8


@pytest.mark.parametrize("tf32", [True, False])
def test_the_tf32_switch_sets_cuda_matmuls_and_convs_at_setup(tf32: bool) -> None:
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("medium")
        _module("sac").setup("fit")  # the default (None) keeps the process's settings
        assert torch.get_float32_matmul_precision() == "medium"
        _module("sac", speed={"tf32": tf32}).setup("fit")
        # Read as Lightning reads it at every CUDA fit (it raised after the per-backend API was used).
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]
