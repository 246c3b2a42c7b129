"""The learning rate as a pure function of the optimizer step (nanoGPT's ``get_lr``).

Being a function of the step alone, the schedule needs no state of its own in a
checkpoint: resuming at step ``s`` gives exactly the rate an uninterrupted run
had at ``s``.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """The rate for optimizer step ``step`` (0-based).

    Linear warmup from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps,
    then ``lr`` (constant) or a cosine decay reaching ``min_lr`` at ``total_steps``
    and staying there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + coeff * (lr - min_lr)
