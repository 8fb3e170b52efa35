"""Tiny text-to-motion policies for tests: the sizes and captions every policy-facing test shares, and a recorder
for the metrics the training loops log."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from motionpref.config import LoraConfig, SamplingConfig
from motionpref.models.generator import MotionGenerator
from motionpref.models.policy import MotionPolicy, PolicyConfig
from motionpref.models.vqvae import MotionVQVAE, VQVAEConfig
from motionpref.train.preference import FinetuneJob, LogMetric

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


def tiny_generator(policy: MotionPolicy, sampling: SamplingConfig, feature_dim: int = 7) -> MotionGenerator:
    """The policy's sampler with a tiny untrained VQ-VAE of its codebook (for callers that decode)."""
    vqvae = MotionVQVAE(VQVAEConfig(feature_dim=feature_dim, nb_code=K, code_dim=8, width=8, depth=1)).eval()
    stats = np.zeros(feature_dim, np.float32), np.ones(feature_dim, np.float32)
    return MotionGenerator(policy, vqvae, *stats, sampling)


def job(
    out_dir: Path,
    lora: LoraConfig | None = None,
    seed: int = 0,
    beta: float | None = None,
    log: LogMetric | None = None,
) -> FinetuneJob:
    return FinetuneJob(seed=seed, lora=lora or LoraConfig(), out_dir=out_dir, beta=beta, log_metric=log)


class Recorder:
    """A ``log_metric(name, value, step)`` that keeps every call; ``series`` reads one metric back."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.logged: list[tuple[str, float, int]] = []

    def __call__(self, name: str, value: float, step: int) -> None:
        self.logged.append((name, value, step))

    def series(self, name: str) -> list[float]:
        return [v for n, v, _ in self.logged if n == self.prefix + name]
