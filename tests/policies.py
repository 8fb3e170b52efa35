"""Tiny text-to-motion policies for tests: the sizes and captions every policy-facing test shares, and a recorder
for the metrics the training loops log."""

from __future__ import annotations

from motionpref.models.policy import MotionPolicy, PolicyConfig

K = 16  # codebook size
CAPTIONS = [
    "a man walks forward",
    "a person jumps up and down twice",
    "someone waves the left hand",
    "the figure turns around slowly and sits",
]
ARCHS = ["t5", "causal"]


def tiny_policy(arch: str = "t5", seed: int = 0, dropout: float = 0.0) -> MotionPolicy:
    config = PolicyConfig(arch=arch, codebook_size=K, d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=dropout)
    return MotionPolicy.from_scratch(config, CAPTIONS, seed=seed)


class Recorder:
    """A ``log_metric(name, value, step)`` that keeps every call; ``series`` reads one metric back."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.logged: list[tuple[str, float, int]] = []

    def __call__(self, name: str, value: float, step: int) -> None:
        self.logged.append((name, value, step))

    def series(self, name: str) -> list[float]:
        return [v for n, v, _ in self.logged if n == self.prefix + name]
