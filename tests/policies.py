"""Tiny text-to-motion policies for tests: the sizes and captions every policy-facing test shares."""

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
