"""Numeric options of `sgqn fit` within their valid intervals, and an image size the networks can take.

Each check raises `ConfigError` with one line naming the option, the bad value and the valid interval
(`sgqn.app.validation` runs them with the other checks, before anything is created).
"""

from __future__ import annotations

from typing import Any

from sgqn.algorithms import ALGORITHMS
from sgqn.app.errors import ConfigError

_COUNT, _EVERY, _LR, _BETA, _FRACTION = "≥ 1", "≥ 0", "≥ 0", "[0, 1)", "[0, 1]"
# Each numeric option → its valid interval ("≥ 1", "> 0", "[0, 1)", …) and, for some, why; a value outside
# fails here in one line instead of as a traceback from deep in the run (a crash, or NaNs hours later).
RANGES: dict[str, tuple[str, str]] = {
    "data.action_repeat": (_COUNT, "control steps per agent step"),
    "data.frame_stack": (_COUNT, "frames stacked into one observation"),
    "data.num_agent_steps": (_EVERY, ""),
    "data.init_steps": (_EVERY, ""),
    "data.updates_per_step": (_COUNT, ""),
    "data.update_every_steps": (_COUNT, ""),
    "data.batch_size": (_COUNT, "transitions per update"),
    "data.replay_capacity": (_COUNT, "transitions the replay holds"),
    "data.replay_spare_rows": (_EVERY, ""),
    "data.n_step": (_COUNT, "rewards summed per TD target"),
    "data.frames_per_batch": (_COUNT, ""),
    "data.policy_sync_every": (_COUNT, ""),
    "model.discount": (_FRACTION, "γ"),
    "model.net.num_conv_layers": (_COUNT, ""),
    "model.net.num_filters": (_COUNT, ""),
    "model.net.feature_dim": (_COUNT, ""),
    "model.net.hidden_dim": (_COUNT, ""),
    "model.net.actor_hidden_dim": (_COUNT, ""),
    "model.sac.actor_lr": (_LR, "a learning rate"),
    "model.sac.critic_lr": (_LR, "a learning rate"),
    "model.sac.alpha_lr": (_LR, "a learning rate; 0 keeps α fixed"),
    "model.sac.actor_beta": (_BETA, "Adam's β1"),
    "model.sac.critic_beta": (_BETA, "Adam's β1"),
    "model.sac.alpha_beta": (_BETA, "Adam's β1"),
    "model.sac.init_temperature": ("> 0", "α, whose log is learned"),
    "model.sac.actor_update_freq": (_COUNT, "agent steps between actor updates"),
    "model.sac.critic_target_update_freq": (_COUNT, "agent steps between target updates"),
    "model.sac.critic_tau": (_FRACTION, "a Polyak rate"),
    "model.sac.encoder_tau": (_FRACTION, "a Polyak rate"),
    "model.sac.shift_pad": (_EVERY, "pixels; 0: no shift"),
    "model.svea.alpha": (_EVERY, "a loss weight"),
    "model.svea.beta": (_EVERY, "a loss weight"),
    "model.svea.overlay_alpha": (_FRACTION, "a blend weight"),
    "model.sgqn.quantile": ("[0, 1)", "ρ: salient pixels reach this quantile of the attribution"),
    "model.sgqn.consistency_weight": (_EVERY, "a loss weight"),
    "model.sgqn.aux_lr": (_LR, "a learning rate"),
    "model.sgqn.aux_beta": (_BETA, "Adam's β1"),
    "model.sgqn.aux_update_freq": (_COUNT, "agent steps between updates"),
    "model.sgqn.decoder_channels": (_COUNT, "channels of each layer"),
    "model.sgqn.overlay_alpha": (_FRACTION, "a blend weight"),
    "model.drqv2.actor_lr": (_LR, "a learning rate"),
    "model.drqv2.critic_lr": (_LR, "a learning rate"),
    "model.drqv2.critic_tau": (_FRACTION, "a Polyak rate"),
    "model.drqv2.shift_pad": (_EVERY, "pixels; 0: no shift"),
    "model.drqv2.stddev_init": (_EVERY, "a standard deviation"),
    "model.drqv2.stddev_final": (_EVERY, "a standard deviation"),
    "model.drqv2.stddev_steps": (_COUNT, "agent steps of the σ schedule"),
    "model.drqv2.stddev_clip": (_EVERY, ""),
    "eval.every_agent_steps": (_EVERY, "0: only at the start / end"),
    "eval.episodes": (_COUNT, "episodes per mode"),
    "eval.saliency_every_evals": (_EVERY, "0: never"),
    "eval.saliency_states": (_COUNT, ""),
    "eval.grid_states": (_COUNT, ""),
    "eval.video_every_evals": (_EVERY, "0: never"),
    "eval.workers": (_EVERY, "0: in this process"),
    "checkpoint.every_agent_steps": (_EVERY, "0: only at the end"),
    "progress.every_agent_steps": (_EVERY, "0: never"),
    "progress.print_every_agent_steps": (_EVERY, "0: every 5%"),
}


MAX_SEED = 2**32 - 1  # numpy's (Lightning's seed_everything refuses others with a traceback)


def check_seed(seed: Any) -> None:
    if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--data.seed {seed}: must be in [0, {MAX_SEED}] (numpy's seeds)")


def within(value: float, interval: str) -> bool:
    """`value` in ``"≥ 1"``, ``"> 0"``, ``"[0, 1)"``, ``"[0, 1]"``."""
    if interval[0] in "≥>":
        low = float(interval[1:])
        return value >= low if interval[0] == "≥" else value > low
    low, high = (float(x) for x in interval[1:-1].split(","))
    return (value >= low if interval[0] == "[" else value > low) and (
        value <= high if interval[-1] == "]" else value < high
    )


def _lookup(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        if node is None or not hasattr(node, "get"):
            return None
        node = node.get(part)
    return node


def check_ranges(config: Any) -> None:
    """Every option of `RANGES` that is set (None: resolved later) within its interval."""
    for key, (interval, why) in RANGES.items():
        value = _lookup(config, key)
        values = list(value) if isinstance(value, list | tuple) else [value]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if any(not within(v, interval) for v in numbers):
            shown = value if len(values) == 1 else list(value)
            reason = f" ({why})" if why else ""
            raise ConfigError(f"--{key} {shown}: must be {interval}{reason}")
    sac = _lookup(config, "model.sac") or {}
    low, high = sac.get("actor_log_std_min"), sac.get("actor_log_std_max")
    if low is not None and high is not None and low >= high:
        raise ConfigError(
            f"--model.sac.actor_log_std_min {low} must be below --model.sac.actor_log_std_max {high}"
        )


# SAC-lineage and DrQ-v2 encoders: Conv(3, stride 2) then (L - 1) × Conv(3, stride 1), no padding.
REFERENCE_CONV_LAYERS = {"sac": 11, "drqv2": 4}  # `--model.net.num_conv_layers` None: the learner's


def smallest_image_size(num_conv_layers: int) -> int:
    """The smallest image an encoder of this depth maps to a non-empty feature map: its side after the
    convs is (n − 3) // 2 + 1 − 2 (L − 1) ≥ 1, i.e. n ≥ 4 L − 1."""
    return 4 * num_conv_layers - 1


def check_image_size(data: Any, model: Any) -> None:
    """`--data.image_size`: positive, large enough for the encoder's depth, and for SGQN's decoder (sgqn,
    drqv2_sgqn) divisible by 4."""
    size = data.get("image_size")
    if size is None:
        return
    algorithm = model["algorithm"]
    learner, guidance = ALGORITHMS[algorithm]
    given = (model.get("net") or {}).get("num_conv_layers")
    layers = REFERENCE_CONV_LAYERS[learner] if given is None else int(given)
    by_4 = guidance == "sgqn"
    empty_below = smallest_image_size(layers)
    smallest = empty_below + (-empty_below % 4 if by_4 else 0)
    if size <= 0:
        raise ConfigError(f"--data.image_size {size}: must be a positive number of pixels, e.g. 84")
    if size < smallest:
        depth = "the learner's reference" if given is None else "--model.net.num_conv_layers"
        multiple = f" (a multiple of 4 for {algorithm}'s saliency decoder)" if by_4 else ""
        raise ConfigError(
            f"--data.image_size {size}: too small for the encoder's {layers} conv layers ({depth}): below "
            f"{empty_below} px they leave an empty feature map; use at least {smallest} px"
            f"{multiple} or fewer --model.net.num_conv_layers"
        )
    if by_4 and size % 4:
        below = size - size % 4
        raise ConfigError(
            f"--data.image_size {size}: {algorithm}'s saliency decoder rebuilds the image by upsampling a "
            f"(size/4)² map twice, so the size must be divisible by 4, e.g. {below} or {below + 4}"
        )
