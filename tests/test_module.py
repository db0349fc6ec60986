"""AgentModule under a real Lightning Trainer: updates, frequencies, the exact fast path, policy, maps."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.utils.data import DataLoader

from reference_update import reference_update
from sgqn.algorithms import saliency_guidance as sg
from sgqn.algorithms.saliency import guided_backprop
from sgqn.algorithms.saliency_guidance import SGQNConfig
from sgqn.evaluation.attribution import saliency_maps
from sgqn.nets.config import NetConfig
from sgqn.training.module import AgentModule
from sgqn.training.speed import SpeedOptions

SIZE, A = 32, 2
SMALL = dict(observation_shape=(9, SIZE, SIZE), action_dim=A)
NET = NetConfig(num_conv_layers=3, num_filters=16, hidden_dim=64, feature_dim=16)


def _module(algorithm: str = "sgqn", **kwargs: Any) -> AgentModule:
    """A small module; `kwargs` are AgentModule arguments, or fields of the networks' config."""
    torch.manual_seed(0)
    speed = SpeedOptions(tune_malloc=False, **kwargs.pop("speed", {}))
    net = NetConfig(**{**vars(NET), **{k: kwargs.pop(k) for k in list(kwargs) if k in vars(NET)}})
    module = AgentModule(algorithm=algorithm, **{**SMALL, "net": net, "speed": speed, **kwargs})
    if module.uses_overlay:
        module.set_overlay_images(torch.randint(0, 256, (6, 3, SIZE, SIZE), dtype=torch.uint8))
    return module


def _batch(b: int = 8, seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    pixels = lambda: torch.randint(0, 256, (b, 9, SIZE, SIZE), dtype=torch.uint8, generator=g)  # noqa: E731
    return TensorDict(
        {
            "pixels": pixels(),
            "action": torch.rand(b, A, generator=g) * 2 - 1,
            "next": {
                "pixels": pixels(),
                "reward": torch.rand(b, 1, generator=g),
                "terminated": torch.zeros(b, 1, dtype=torch.bool),
            },
        },
        batch_size=[b],
    )


class _SeedEachBatch(L.Callback):
    """Fixes the RNG at every update so a hand-written replay can draw the same numbers.

    Counts updates itself: the module pulls its batch inside `training_step`, so the hook's `batch_idx`
    is the previous fetch's."""

    def __init__(self) -> None:
        self.updates = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        torch.manual_seed(1000 + self.updates)
        self.updates += 1


def _fit(
    module: AgentModule, batches: list[TensorDict], callbacks: list[L.Callback] | None = None
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks or [],
    )
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda x: x))
    return trainer


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("algorithm", ["sac", "svea", "sgqn"])
def test_trainer_runs_training_steps_and_parameters_change(algorithm: str) -> None:
    module = _module(algorithm)
    before = _params(module)
    trainer = _fit(module, [_batch(seed=i) for i in range(3)])
    after = module.state_dict()
    assert int(module.update_step) == 3
    groups = ["agent.critic.encoder.", "agent.critic.projection.", "agent.critic.q1.", "agent.critic.q2."]
    groups += ["agent.actor.projection.", "agent.actor.trunk.", "agent.log_alpha", "agent.target_critic."]
    if algorithm == "sgqn":
        groups.append("agent.decoder.")
    for group in groups:
        keys = [k for k in before if k.startswith(group)]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), group
    metrics = trainer.callback_metrics
    expected = {"loss_critic", "loss_actor", "loss_alpha", "alpha", "entropy", "q1_mean", "target_q_mean"}
    if algorithm == "sgqn":
        expected |= {"loss_consistency", "loss_attribution", "mask_coverage"}
    assert {f"train/{k}" for k in expected} <= set(metrics)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_update_counter_drives_the_frequencies_and_is_checkpointed(monkeypatch: pytest.MonkeyPatch) -> None:
    from sgqn.algorithms.sac import SACConfig

    sac = SACConfig(actor_update_freq=2, critic_target_update_freq=3)
    module = _module("sgqn", sac=sac, sgqn=SGQNConfig(aux_update_freq=2))
    calls = {"actor": 0, "target": 0, "aux": 0, "critic": 0}
    agent = module.agent

    def count(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    agent.soft_target = count("critic", agent.soft_target)  # type: ignore[method-assign]  # once per update
    agent.actor_loss = count("actor", agent.actor_loss)  # type: ignore[method-assign]
    monkeypatch.setattr(sg, "attribution_loss", count("aux", sg.attribution_loss))
    agent.target_critic.update = count("target", agent.target_critic.update)  # type: ignore[method-assign]
    _fit(module, [_batch(seed=i) for i in range(5)])
    assert calls == {"critic": 5, "actor": 3, "aux": 3, "target": 2}  # updates 0..4: even; 0 and 3
    assert module.state_dict()["update_step"] == 5


def test_fast_path_equals_the_naive_reference_ordered_update() -> None:
    module = _module("sgqn", sgqn=SGQNConfig(quantile=0.9))
    reference = copy.deepcopy(module)
    batches = [_batch(seed=i) for i in range(3)]  # updates 0, 1, 2: with and without the even-step parts
    trainer = _fit(module, batches, [_SeedEachBatch()])

    opts = reference.configure_optimizers()
    for step, batch in enumerate(batches):
        torch.manual_seed(1000 + step)
        # our guided backprop (equal to captum's, tests/test_saliency.py): the masks then match exactly
        losses = reference_update(reference.agent, batch, opts, step, attribution=guided_backprop)
    logged = trainer.callback_metrics
    for name, value in losses.items():
        torch.testing.assert_close(logged[f"train/{name}"], value.detach(), rtol=1e-6, atol=1e-7)
    fast, naive = module.state_dict(), reference.state_dict()
    assert fast.keys() == naive.keys() and int(fast.pop("update_step")) == 3
    for key in fast:
        torch.testing.assert_close(fast[key], naive[key], rtol=1e-6, atol=1e-7, msg=key)
    assert not torch.equal(
        fast["agent.critic.q1.0.weight"], _module("sgqn").state_dict()["agent.critic.q1.0.weight"]
    )


def test_policy_module_batched_unbatched_deterministic_and_shared() -> None:
    module = _module("sac")
    policy = module.policy_module(deterministic=True)
    assert isinstance(policy, TensorDictModule) and policy.module.actor is module.actor
    pixels = torch.randint(0, 256, (4, 9, SIZE, SIZE), dtype=torch.uint8)
    batched = policy(TensorDict({"pixels": pixels}, [4]))["action"]
    single = policy(TensorDict({"pixels": pixels[0]}, []))["action"]
    assert batched.shape == (4, A) and single.shape == (A,) and not batched.requires_grad
    with torch.no_grad():
        mean, _ = module.actor(pixels)
    torch.testing.assert_close(batched, torch.tanh(mean))
    torch.testing.assert_close(single, batched[0])
    nested = policy(TensorDict({"pixels": pixels.view(2, 2, 9, SIZE, SIZE)}, [2, 2]))["action"]
    torch.testing.assert_close(nested.reshape(4, A), batched)

    explore = module.policy_module(deterministic=False)
    sampled = explore(TensorDict({"pixels": pixels}, [4]))["action"]
    assert sampled.shape == (4, A) and not torch.allclose(sampled, batched) and sampled.abs().max() <= 1
    with torch.no_grad():
        module.actor.trunk[-1].bias.add_(1.0)  # the policy reads the live parameters, not a copy
    assert not torch.allclose(policy(TensorDict({"pixels": pixels}, [4]))["action"], batched)


@pytest.mark.parametrize("algorithm", ["sac", "sgqn"])
def test_attribution_maps_has_no_optimizer_side_effects(algorithm: str) -> None:
    module = _module(algorithm, sgqn=SGQNConfig(quantile=0.95) if algorithm == "sgqn" else SGQNConfig())
    module.quantile = 0.95  # the saliency maps of any algorithm use this ρ
    before = _params(module)
    obs = torch.randint(0, 256, (3, 9, SIZE, SIZE), dtype=torch.uint8)
    maps = saliency_maps(module, obs)
    assert maps["attribution"].shape == maps["mask"].shape == maps["masked_obs"].shape == (3, 9, SIZE, SIZE)
    assert maps["mask"].dtype == torch.bool
    coverage = maps["mask"].float().mean().item()
    assert 0.05 <= coverage < 0.5
    torch.testing.assert_close(maps["masked_obs"], obs.float() * maps["mask"])
    if algorithm == "sgqn":
        assert maps["predicted_mask"].dtype == torch.bool and maps["predicted_prob"].shape == (
            3,
            9,
            SIZE,
            SIZE,
        )
    else:
        assert maps["predicted_mask"] is None
    assert all(p.grad is None for p in module.parameters())
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    single = saliency_maps(module, obs[0], action=torch.zeros(A))
    assert single["mask"].shape == (9, SIZE, SIZE)


def test_channels_last_gives_the_same_update() -> None:
    batches = [_batch(seed=i) for i in range(2)]
    plain, fast = (
        _module("sgqn", speed={"channels_last": False}),
        _module("sgqn", speed={"channels_last": True}),
    )
    first_conv = lambda m: m.critic.encoder.convs[0].weight  # noqa: E731
    assert first_conv(fast).is_contiguous(memory_format=torch.channels_last)
    assert not first_conv(plain).is_contiguous(memory_format=torch.channels_last)
    _fit(plain, batches, [_SeedEachBatch()])
    _fit(fast, batches, [_SeedEachBatch()])
    a, b = plain.state_dict(), fast.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_bf16_autocast_runs_and_keeps_fp32_losses() -> None:
    module = _module("sgqn", speed={"autocast_bf16": True})
    trainer = _fit(module, [_batch(seed=i) for i in range(2)])
    for key in ("train/loss_critic", "train/loss_attribution"):
        assert trainer.callback_metrics[key].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.slow
def test_compile_runs_with_manual_optimisation() -> None:
    module = _module("sgqn", speed={"compile_update": True})
    before = _params(module)
    trainer = _fit(module, [_batch(seed=i) for i in range(2)])
    assert int(module.update_step) == 2 and torch.isfinite(trainer.callback_metrics["train/loss_attribution"])
    after = module.state_dict()
    assert not torch.equal(before["agent.critic.q1.0.weight"], after["agent.critic.q1.0.weight"])
    assert not torch.equal(
        before["agent.decoder.convs.conv3.weight"], after["agent.decoder.convs.conv3.weight"]
    )


def test_setup_loads_the_overlay_images_when_none_were_injected() -> None:
    torch.manual_seed(0)
    module = AgentModule(algorithm="svea", **SMALL, net=NET, speed=SpeedOptions(tune_malloc=False))
    assert module.agent.overlay is not None and module.agent.overlay.images is None
    module.setup("fit")
    images = module.agent.overlay.images
    assert images is not None and images.dtype == torch.uint8 and images.shape[1:] == (3, SIZE, SIZE)
    assert "agent.overlay.images" not in module.state_dict()  # not checkpointed: reloaded at setup


def test_checkpoint_round_trip_restores_weights_and_the_update_counter(tmp_path: Any) -> None:
    module = _module("sgqn")
    trainer = _fit(module, [_batch(seed=i) for i in range(3)])
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    restored = AgentModule.load_from_checkpoint(path, map_location="cpu")
    assert restored.hparams["algorithm"] == "sgqn" and int(restored.update_step) == 3
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    assert restored.actor.encoder is restored.critic.encoder  # sharing survives the reload


@pytest.mark.parametrize("algorithm", ["sgqn", "drqv2"])
def test_actor_width_defaults_to_the_critics_and_can_differ(tmp_path: Any, algorithm: str) -> None:
    def widths(module: AgentModule) -> tuple[int, int]:
        return module.actor.trunk[0].out_features, module.critic.q1[0].out_features

    assert widths(_module(algorithm)) == (64, 64)  # None: `hidden_dim`, as the reference
    module = _module(algorithm, actor_hidden_dim=256)
    assert widths(module) == (256, 64)
    trainer = _fit(module, [_batch(seed=i) for i in range(2)])
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert widths(AgentModule.load_from_checkpoint(tmp_path / "last.ckpt", map_location="cpu")) == (256, 64)
    # A wider actor starts closer to zero action (orthogonal init: the mean shrinks as 1/sqrt(width)).
    obs = _batch(64)["pixels"].float()
    spread = [_module(algorithm, actor_hidden_dim=w).actor(obs) for w in (16, 1024)]
    mean = lambda out: (out[0] if isinstance(out, tuple) else out).abs().mean()  # noqa: E731
    assert mean(spread[1]) < mean(spread[0]) / 3


class _AtAgentSteps(AgentModule):
    """Updates run at given agent steps, as the data stream would report them."""

    at: list[int]

    def _agent_steps(self) -> int | None:
        return self.at[int(self.update_step)]


@pytest.mark.parametrize(
    ("schedule", "expected_actor_steps"),
    # a burst of 4 updates at agent step 4 (init_steps = 4), then one update at each of steps 5..8
    [("reference", [1, 2, 3, 4, 4, 5, 5, 6]), ("counted", [1, 1, 2, 2, 3, 3, 4, 4])],
)
def test_the_burst_steps_actor_target_and_predictor_as_the_reference(
    schedule: str, expected_actor_steps: list[int]
) -> None:
    torch.manual_seed(0)
    module = _AtAgentSteps(
        algorithm="sgqn",
        **{**SMALL, "net": NET, "speed": SpeedOptions(tune_malloc=False), "update_schedule": schedule},
    )
    module.set_overlay_images(torch.randint(0, 256, (6, 3, SIZE, SIZE), dtype=torch.uint8))
    module.at = [4, 4, 4, 4, 5, 6, 7, 8]
    targets: list[int] = []
    update = module.agent.target_critic.update
    module.agent.target_critic.update = lambda critic: (
        targets.append(int(module.update_step)),
        update(critic),
    )  # type: ignore[method-assign]
    actor_steps, aux_steps = [], []

    class Count(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, m: L.LightningModule, *args: Any) -> None:
            _, actor_opt, _, aux_opt = m.optimizers()  # type: ignore[misc]
            step = lambda opt: int(next(iter(opt.optimizer.state.values()), {"step": 0})["step"])  # noqa: E731
            actor_steps.append(step(actor_opt))
            aux_steps.append(step(aux_opt))

    _fit(module, [_batch(seed=i) for i in range(8)], [Count()])
    assert actor_steps == expected_actor_steps
    assert aux_steps == expected_actor_steps  # all three share the frequency 2
    assert len(targets) == expected_actor_steps[-1]


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_sgqn_masks_each_stacked_frame_for_any_frame_stack(frames: int) -> None:
    # The mask's frames come from the observation's channels: with 2 or 4 stacked frames a fixed "3"
    # would split the channels wrongly (or fail).
    torch.manual_seed(0)
    shape = (3 * frames, SIZE, SIZE)
    module = AgentModule(
        algorithm="sgqn",
        **{**SMALL, "observation_shape": shape, "net": NET, "speed": SpeedOptions(tune_malloc=False)},
    )
    obs = torch.randint(0, 256, (4, *shape), dtype=torch.uint8).float()
    saliency = sg.saliency(module.agent.critic, obs, torch.rand(4, A), module.agent.quantile, "keep")
    per_frame = saliency.mask.reshape(4, frames, 3, -1)
    assert torch.equal(per_frame[:, :, 0], per_frame[:, :, 2])  # one mask per frame, over its colours
    coverage = per_frame[:, :, 0].float().mean(-1)
    assert ((coverage >= 0.05) & (coverage < 0.5)).all(), coverage  # ~1 - rho of EACH frame is kept
    maps = saliency_maps(module, obs[:2].to(torch.uint8))
    assert maps["mask"].shape == (2, *shape) and maps["predicted_mask"].shape == (2, *shape)
