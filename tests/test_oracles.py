"""DrQ-v2's and SVEA's updates against independent re-derivations of their references' updates
(tests/reference_drqv2.py, tests/reference_svea.py): three updates in float64 from the same weights, the
same batch and the same random numbers; every parameter (online, target, actor, log α) and every loss
agrees to a relative 1e-9."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from reference_drqv2 import DrQv2Oracle
from reference_functional import Params
from reference_svea import SVEAOracle
from sgqn.algorithms.agent import Optimizers, adam_optimizers
from sgqn.algorithms.drqv2 import DrQv2, DrQv2Config
from sgqn.algorithms.sac import SACConfig
from sgqn.algorithms.svea import SVEA, SVEAConfig
from sgqn.nets.config import NetConfig

SIZE, A, B = 16, 2, 6
NET = NetConfig(num_conv_layers=2, num_filters=4, feature_dim=8, hidden_dim=16)
RTOL, ATOL = 1e-9, 1e-12
GAMMA = 0.99


def _batch(discount: list[float]) -> TensorDict:
    """Random uint8 pixels; float64 actions, rewards and the n-step replay's γ^m (0: terminated)."""
    g = torch.Generator().manual_seed(3)
    pixels = lambda: torch.randint(0, 256, (B, 9, SIZE, SIZE), dtype=torch.uint8, generator=g)  # noqa: E731
    gamma_m = torch.tensor(discount, dtype=torch.float64).view(B, 1)
    nxt = {
        "pixels": pixels(),
        "reward": torch.rand(B, 1, generator=g, dtype=torch.float64),
        "terminated": gamma_m == 0,
        "discount": gamma_m,
    }
    action = torch.rand(B, A, generator=g, dtype=torch.float64) * 1.8 - 0.9
    return TensorDict({"pixels": pixels(), "action": action, "next": nxt}, [B])


def _perturb(module: nn.Module, scale: float = 0.05) -> None:
    """Move a target network away from the online one, so that reading one for the other shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _relative_error(got: Tensor, want: Tensor) -> float:
    """max |got − want| / |want| over the entries with |want| > 1e-8 (absolute error elsewhere)."""
    diff = (got.detach() - want.detach()).abs()
    scale = want.detach().abs()
    return float(torch.where(scale > 1e-8, diff / scale.clamp_min(1e-8), diff).max())


def _check(name: str, got: Tensor, want: Tensor, errors: dict[str, float]) -> None:
    assert got.dtype == want.dtype == torch.float64, name
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")
    errors[name] = max(errors.get(name, 0.0), _relative_error(got, want))


def _check_params(
    group: str, module: nn.Module, want: Params, errors: dict[str, float], skip: str | None = None
) -> None:
    got = {n: p for n, p in module.named_parameters() if skip is None or not n.startswith(skip)}
    assert set(got) == set(want), group
    for n, p in got.items():
        _check(f"{group}.{n}", p, want[n], errors)


def _worst(errors: dict[str, float]) -> float:
    name = max(errors, key=errors.__getitem__)
    print(f"max relative error {errors[name]:.2e} ({name}, over {len(errors)} tensors)")  # pytest -s
    return errors[name]


def _moved(before: dict[str, Tensor], module: nn.Module) -> bool:
    return all(not torch.equal(before[n], p) for n, p in module.named_parameters() if n in before)


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ---------------------------------------------------------------------------------------------- DrQ-v2


def _drqv2() -> DrQv2:
    torch.manual_seed(0)
    config = DrQv2Config(actor_lr=1e-3, critic_lr=1e-3, critic_tau=0.02, stddev_steps=4)
    agent = DrQv2((9, SIZE, SIZE), A, config, NET).double()
    with torch.no_grad():  # a saturating policy: means near ±1, so that the (−1, 1) clamp binds
        agent.actor.trunk[4].weight.mul_(20.0)
    _perturb(agent.target_critic)
    return agent


def test_drqv2_three_updates_equal_the_reference_in_float64() -> None:
    agent = _drqv2()
    oracle = DrQv2Oracle(agent)  # a deep copy of the same weights
    opt = Optimizers(adam_optimizers(agent))
    # n-step windows of 3: full (γ³), shorter at an episode's end (γ², γ), terminated (0)
    batch = _batch([GAMMA**3, GAMMA**2, 0.0, GAMMA**3, GAMMA, GAMMA**3])
    before = {"critic": _snapshot(agent.critic), "actor": _snapshot(agent.actor)}
    before["target"] = _snapshot(agent.target_critic)
    errors: dict[str, float] = {}
    sigmas = []
    for k, step in enumerate((1, 2, 3)):
        torch.manual_seed(100 + k)
        metrics = agent.update(batch, opt, agent.due(step))
        torch.manual_seed(100 + k)
        want = oracle.update(batch, step)

        for name, value in want.items():
            _check(name, metrics[name], value, errors)
        _check_params("encoder", agent.critic.encoder, oracle.encoder, errors)
        _check_params("critic", agent.critic, oracle.critic, errors, skip="encoder.")
        _check_params("actor", agent.actor, oracle.actor, errors, skip="encoder.")
        _check_params("target", agent.target_critic, oracle.target, errors)
        assert float(agent.exploration_stddev()) == oracle.stddev(step)  # σ_t of this update
        sigmas.append(oracle.stddev(step))

    assert sigmas == [0.775, 0.55, 0.325]  # linear(1.0, 0.1, 4) at agent steps 1, 2, 3
    for tag in ("target", "actor"):  # both clamps bound for some entries, and not for all of them
        for what in ("noise_clipped", "action_clamped"):
            assert 0 < oracle.binds[f"{tag}_{what}"] < 3 * B * A, (tag, what, oracle.binds)
    for group in ("critic", "actor", "target"):  # everything the update trains moved
        assert _moved(before[group], getattr(agent, "target_critic" if group == "target" else group))
    assert _worst(errors) <= RTOL


# ---------------------------------------------------------------------------------------------- SVEA


def _svea() -> SVEA:
    torch.manual_seed(0)
    agent = SVEA((9, SIZE, SIZE), A, SACConfig(), SVEAConfig(alpha=0.3, beta=0.9), NET).double()
    agent.overlay.set_images(torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8))
    _perturb(agent.target_critic)
    return agent


def test_svea_three_updates_equal_the_reference_in_float64() -> None:
    agent = _svea()
    oracle, without_overlay = SVEAOracle(agent), SVEAOracle(agent, overlay_term=False)
    opt = Optimizers(adam_optimizers(agent))
    # one-step, γ · not_done given as the ("next", "discount") column: without it `Agent.bootstrap` forms
    # γ · not_done in float32 (γ = 0.9900000095…), which a float64 comparison would see
    batch = _batch([GAMMA, GAMMA, 0.0, GAMMA, GAMMA, GAMMA])
    errors: dict[str, float] = {}
    # agent steps 2, 3, 4 with the actor and the target every second step: critic ×3, actor/α/target ×2
    for k, step in enumerate((2, 3, 4)):
        torch.manual_seed(100 + k)
        metrics = agent.update(batch, opt, agent.due(step))
        torch.manual_seed(100 + k)
        want = oracle.update(batch, step)
        torch.manual_seed(100 + k)
        without_overlay.update(batch, step)

        assert set(want) <= set(metrics)
        assert ("loss_actor" in want) == (step % 2 == 0)
        for name, value in want.items():
            _check(name, metrics[name], value, errors)
        _check_params("critic", agent.critic, oracle.critic, errors)
        _check_params("actor", agent.actor, oracle.actor, errors, skip="encoder.")
        _check_params("target", agent.target_critic.critic, oracle.target, errors)
        _check("log_alpha", agent.log_alpha, oracle.log_alpha, errors)
    assert _worst(errors) <= RTOL

    # β·TD(overlay) is in the update: the same oracle without it ends far from the package
    far = max(_relative_error(p, without_overlay.critic[n]) for n, p in agent.critic.named_parameters())
    assert far > 1e-4
