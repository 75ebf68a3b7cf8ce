"""The paper's optimizer: Adam, decoupled weight decay, clipping, cosine."""

import keras

# big_vision decays only kernels (`wd_mults = [(".*/kernel$", 1.0)]`).
_NOT_A_KERNEL = r"^(?!kernel$)"


def warmup_cosine_schedule(
    learning_rate: float,
    total_steps: int,
    warmup_steps: int,
    final_fraction: float = 0.0,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay.

    Args:
        learning_rate: float. Peak learning rate.
        total_steps: int. Steps of the whole schedule (warmup included).
        warmup_steps: int. Linear warmup steps.
        final_fraction: float. Final learning rate as a fraction of the
            peak.

    Returns:
        A Keras learning-rate schedule.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps ({warmup_steps}) < total_steps "
            f"({total_steps})."
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=final_fraction,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def siglip2_optimizer(
    total_steps: int,
    learning_rate: float = 1e-3,
    warmup_steps: int | None = None,
    weight_decay: float = 1e-4,
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    global_clipnorm: float = 1.0,
    schedule: keras.optimizers.schedules.LearningRateSchedule | None = None,
) -> keras.optimizers.AdamW:
    """Adam with decoupled weight decay, global-norm clipping and a
    warmup + cosine schedule, as in SigLIP 2 (big_vision conventions).

    `weight_decay` follows big_vision: the decay per step is
    `weight_decay * schedule(step) / learning_rate` of the weight, i.e. it
    follows the schedule's shape but not the peak learning rate. Keras'
    `AdamW` multiplies its decay by the current learning rate, so it gets
    `weight_decay / learning_rate`. Only kernels are decayed.

    Args:
        total_steps: int. Length of the schedule.
        learning_rate: float. Peak learning rate (1e-3 in the paper).
        warmup_steps: int. Warmup (20k at full scale); defaults to 5% of
            `total_steps`.
        weight_decay: float. Decoupled weight decay (1e-4 in the paper).
        beta_1: float.
        beta_2: float. 0.95 as in SigLIP (stability at large batch).
        global_clipnorm: float. Global gradient-norm clip (1.0).
        schedule: optional learning-rate schedule peaking at
            `learning_rate`, used instead of warmup + cosine over
            `total_steps` (the recipe's stage-aware schedule).

    Returns:
        A `keras.optimizers.AdamW`.
    """
    if warmup_steps is None:
        warmup_steps = max(1, total_steps // 20) if total_steps > 1 else 0
    if schedule is None:
        schedule = warmup_cosine_schedule(
            learning_rate, total_steps, warmup_steps
        )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay / learning_rate if learning_rate else 0.0,
        beta_1=beta_1,
        beta_2=beta_2,
        global_clipnorm=global_clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_names=[_NOT_A_KERNEL])
    return optimizer
