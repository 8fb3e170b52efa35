"""Checks shared by the model loaders: a state dict must fit its module exactly, or say where not."""

from __future__ import annotations

import torch
from torch import nn


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise a ValueError naming every missing, unexpected or wrongly shaped key of ``state``."""
    expected = module.state_dict()
    problems = [f"missing key {k!r} (expected shape {tuple(v.shape)})" for k, v in expected.items() if k not in state]
    problems += [f"unexpected key {k!r} (shape {tuple(v.shape)})" for k, v in state.items() if k not in expected]
    problems += [
        f"key {k!r}: expected shape {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if problems:
        raise ValueError(f"{where}: state dict does not match the model:\n  " + "\n  ".join(problems))
