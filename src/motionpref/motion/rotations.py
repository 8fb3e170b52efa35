"""Rotation utilities for the HumanML3D representation.

Only what the feature recipe needs: yaw rotations, the minimal rotation between two directions, and the
continuous 6D representation (Zhou et al., "On the Continuity of Rotation Representations in Neural
Networks", CVPR 2019) with HumanML3D's layout (the first two columns of the matrix).
Functions marked "numpy or torch" run unchanged on both, because recovering joints from features must
also run on batched, differentiable torch tensors in training and evaluation; scipy only covers numpy.
"""

from __future__ import annotations

from types import ModuleType
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def array_module(x: np.ndarray | torch.Tensor) -> ModuleType:
    """``torch`` for tensors, ``numpy`` otherwise; the calls used here take axes positionally in both."""
    return torch if isinstance(x, torch.Tensor) else np


def rotate_y(v: Array, angle: Array) -> Array:
    """Rotate vectors ``v`` (..., 3) about +y by ``angle`` (broadcast to ``v.shape[:-1]``), right-handed.

    numpy or torch. With the body facing +z, a positive angle turns +z towards +x.
    """
    xp = array_module(v)
    c, s = xp.cos(angle), xp.sin(angle)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return xp.stack([c * x + s * z, y, c * z - s * x], -1)


def yaw_matrix(angle: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) about +y, the matrix form of :func:`rotate_y`."""
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(np.shape(angle) + (3, 3))
    m[..., 0, 0], m[..., 0, 2], m[..., 1, 1], m[..., 2, 0], m[..., 2, 2] = c, s, 1.0, -s, c
    return m


def heading_angle(forward: np.ndarray) -> np.ndarray:
    """Yaw (radians) of horizontal directions (..., 3): ``rotate_y(+z, heading) == forward``."""
    return np.arctan2(forward[..., 0], forward[..., 2])


def rotation_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction ``u`` to ``v`` (both (..., 3)), as matrices (..., 3, 3).

    Hand-written because scipy's ``Rotation.align_vectors`` fits one rotation to many pairs, and we need one
    rotation per pair. Rodrigues' formula R = I + K + K^2 / (1 + c), K = [u x v]_x, c = u . v, for unit
    vectors; opposite vectors (c = -1) get a half turn about an axis perpendicular to ``u``.
    """
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    u, v = np.broadcast_arrays(u, v)
    w = np.cross(u, v)
    c = np.sum(u * v, axis=-1)
    k = np.zeros(w.shape + (3,))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    k[..., 1, 0], k[..., 2, 0], k[..., 2, 1] = w[..., 2], -w[..., 1], w[..., 0]
    opposite = c < -1.0 + 1e-9
    denom = np.where(opposite, 1.0, 1.0 + c)
    r = np.eye(3) + k + (k @ k) / denom[..., None, None]
    if np.any(opposite):
        uo = u[opposite]
        # any axis perpendicular to u: cross with the coordinate axis u is least aligned with
        helper = np.eye(3)[np.argmin(np.abs(uo), axis=-1)]
        axis = np.cross(uo, helper)
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        r[opposite] = 2.0 * axis[:, :, None] * axis[:, None, :] - np.eye(3)
    return r


def matrix_to_cont6d(m: Array) -> Array:
    """6D rotation (..., 6) = first column then second column of ``m`` (..., 3, 3), HumanML3D's order.

    numpy or torch.
    """
    cols = m[..., :, :2].swapaxes(-1, -2)
    return cols.reshape(*cols.shape[:-2], 6)


def cont6d_to_matrix(d6: Array) -> Array:
    """Rotation matrices (..., 3, 3) from 6D vectors by Gram-Schmidt (Zhou et al. 2019, Sec. 4.2).

    numpy or torch (differentiable).
    """
    xp = array_module(d6)
    a1, a2 = d6[..., 0:3], d6[..., 3:6]
    x = a1 / _norm(a1)
    z = _cross(x, a2)
    z = z / _norm(z)
    y = _cross(z, x)
    return xp.stack([x, y, z], -1)


def _norm(v: Array) -> Array:
    if isinstance(v, torch.Tensor):
        return torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return np.linalg.norm(v, axis=-1, keepdims=True)


def _cross(a: Array, b: Array) -> Array:
    if isinstance(a, torch.Tensor):
        return torch.linalg.cross(a, b, dim=-1)
    return np.cross(a, b)
