"""Stick-figure rendering of motions to GIF/MP4 or to frame arrays.

A fixed camera (azimuth, elevation, mild perspective) follows the root: the figure stays centred
while a world-fixed floor grid scrolls under it and the root's past path is traced on the floor,
as in the T2M ``plot_3d_motion`` videos. The projection is done here and drawn with 2D matplotlib
artists that are created once and updated per frame (an Axes3D redraw is several times slower).
Left limbs are blue, right limbs red, the spine dark grey.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image

from motionpref.io import write_all
from motionpref.motion.skeleton import HUMANML3D, Skeleton

_LEFT_COLOURS = ("#1f5fbf", "#4f9be8")  # legs, then arms
_RIGHT_COLOURS = ("#c0392b", "#ef7d57")
_CENTRE_COLOUR = "#333333"
_GRID_SPACING = 0.5  # metres
_HEAD_RADIUS = 0.11  # metres, drawn around the head joint


def _to_joints(motion: Any, skeleton: Skeleton) -> np.ndarray:
    """(T, J, 3) positions from joints or from un-normalised features (numpy or torch)."""
    if hasattr(motion, "detach"):
        motion = motion.detach().cpu().numpy()
    motion = np.asarray(motion, dtype=np.float64)
    if motion.ndim == 3 and motion.shape[1:] == (skeleton.n_joints, 3):
        joints = motion
    elif motion.ndim == 2 and motion.shape[1] == skeleton.feature_dim:
        from motionpref.motion.features import recover_joints  # imports torch, needed only here

        joints = np.asarray(recover_joints(motion, skeleton), dtype=np.float64)
    else:
        raise ValueError(
            f"expected joints (T, {skeleton.n_joints}, 3) or features (T, {skeleton.feature_dim}) "
            f"for skeleton {skeleton.name!r}, got shape {motion.shape}"
        )
    if len(joints) == 0 or not np.isfinite(joints).any():
        raise ValueError(f"motion of shape {motion.shape} has no finite frames to render")
    return joints


class _Camera:
    """Orthographic camera basis plus a perspective factor ``dist / (dist - depth)``."""

    def __init__(self, azimuth: float, elevation: float, distance: float):
        az, el = np.deg2rad(azimuth), np.deg2rad(elevation)
        self.back = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
        self.right = np.cross([0.0, 1.0, 0.0], self.back)
        self.right /= np.linalg.norm(self.right)
        self.up = np.cross(self.back, self.right)
        self.distance = distance

    def project(self, points: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Screen xy (..., 2) and depth (...,) of world points relative to the look-at ``target``."""
        q = points - target
        depth = q @ self.back
        scale = self.distance / (self.distance - depth)
        return np.stack([q @ self.right * scale, q @ self.up * scale], axis=-1), depth


def _chain_colours(skeleton: Skeleton) -> list[str]:
    colours, n_left, n_right = [], 0, 0
    for chain in skeleton.kinematic_chain:
        name = skeleton.joint_names[chain[-1]]
        if name.startswith("left_"):
            colours.append(_LEFT_COLOURS[min(n_left, 1)])
            n_left += 1
        elif name.startswith("right_"):
            colours.append(_RIGHT_COLOURS[min(n_right, 1)])
            n_right += 1
        else:
            colours.append(_CENTRE_COLOUR)
    return colours


class _Panel:
    """The artists of one motion in one axes, updated in place for each frame."""

    def __init__(
        self,
        ax,
        joints: np.ndarray,
        skeleton: Skeleton,
        camera: _Camera,
        view: _View,
        title: str,
        title_y: float,
    ):
        self.joints, self.skeleton, self.camera, self.view = joints, skeleton, camera, view
        px = view.px_per_unit * view.unit  # pixels per metre
        ax.set_xlim(-view.half, view.half)
        ax.set_ylim(-view.half, view.half)
        ax.set_aspect("equal")
        ax.set_axis_off()
        self.grid = LineCollection([], colors="#c8c8c8", linewidths=max(0.8, px * 0.004), zorder=0)
        ax.add_collection(self.grid)
        (self.path,) = ax.plot([], [], color="#8a8a8a", lw=max(1.0, px * 0.008), zorder=1, alpha=0.8)
        width = max(1.5, px * 0.028)
        self.chains = [
            ax.plot([], [], color=c, lw=width, solid_capstyle="round", zorder=3)[0] for c in _chain_colours(skeleton)
        ]
        self.head_joint = skeleton.joint_names.index("head")
        head_pt = 2 * _HEAD_RADIUS * px * 72 / 100  # marker size is in points, 72 to the 100-dpi inch
        (self.head,) = ax.plot(
            [],
            [],
            "o",
            ms=head_pt,
            mfc="white",
            mec=_CENTRE_COLOUR,
            mew=width * 0.8,
            zorder=4 + len(self.chains),
        )
        self.clock = ax.text(0.03, 0.03, "", transform=ax.transAxes, fontsize=7, color="#555555")
        if title:
            ax.text(0.03, title_y, title, transform=ax.transAxes, fontsize=9, weight="bold", va="top")

    def update(self, t: int) -> None:
        t = min(t, len(self.joints) - 1)  # a shorter motion holds its last pose
        frame = self.joints[t]
        root = frame[0]
        floor = self.view.floor_y
        target = np.array([root[0], self.view.centre_y, root[2]])
        xy, depth = self.camera.project(frame, target)
        # Far chains first, so the near arm covers the torso.
        order = np.argsort([depth[list(chain)].mean() for chain in self.skeleton.kinematic_chain])
        for rank, i in enumerate(order):
            chain = list(self.skeleton.kinematic_chain[i])
            self.chains[i].set_data(xy[chain, 0], xy[chain, 1])
            self.chains[i].set_zorder(3 + rank)
        self.head.set_data([xy[self.head_joint, 0]], [xy[self.head_joint, 1]])
        self.grid.set_segments(self._grid_segments(target, floor))
        trail = np.stack([self.joints[: t + 1, 0, 0], np.full(t + 1, floor), self.joints[: t + 1, 0, 2]], -1)
        trail_xy, _ = self.camera.project(trail, target)
        self.path.set_data(trail_xy[:, 0], trail_xy[:, 1])
        fps = self.view.fps
        self.clock.set_text(f"{t / fps:.1f} / {(len(self.joints) - 1) / fps:.1f} s")

    def _grid_segments(self, target: np.ndarray, floor: float) -> np.ndarray:
        reach = self.view.half * 1.1
        spacing = _GRID_SPACING * self.view.unit
        xs = np.arange(np.ceil((target[0] - reach) / spacing), np.floor((target[0] + reach) / spacing) + 1)
        zs = np.arange(np.ceil((target[2] - reach) / spacing), np.floor((target[2] + reach) / spacing) + 1)
        lo_x, hi_x, lo_z, hi_z = target[0] - reach, target[0] + reach, target[2] - reach, target[2] + reach
        ends = [[(x * spacing, floor, lo_z), (x * spacing, floor, hi_z)] for x in xs]
        ends += [[(lo_x, floor, z * spacing), (hi_x, floor, z * spacing)] for z in zs]
        xy, _ = self.camera.project(np.asarray(ends, dtype=np.float64).reshape(-1, 3), target)
        return xy.reshape(-1, 2, 2)


@dataclass(frozen=True)
class _View:
    """What every panel shares: the floor, the look-at height, the scale and the length unit."""

    floor_y: float
    centre_y: float
    half: float  # half the visible width, in the data's unit
    unit: float  # data units per metre, a power of ten: 1 for HumanML3D, 1000 for KIT-ML's millimetres
    size: int  # pixels a panel side
    fps: float

    @property
    def px_per_unit(self) -> float:
        return self.size / (2 * self.half)


def _view(joint_sets: Sequence[np.ndarray], skeleton: Skeleton, floor_y: float | None, size: int, fps: float) -> _View:
    head = skeleton.joint_names.index("head")
    # The pelvis-to-head distance (~0.6 m in both skeletons) tells metres from centi- or millimetres.
    trunk = np.nanmedian(np.concatenate([np.linalg.norm(j[:, head] - j[:, 0], axis=-1) for j in joint_sets]))
    unit = float(10 ** np.round(np.log10(trunk / 0.6))) if np.isfinite(trunk) and trunk > 0 else 1.0
    floor = float(min(np.nanmin(j[..., 1]) for j in joint_sets)) if floor_y is None else float(floor_y)
    top = float(max(np.nanmax(j[..., 1]) for j in joint_sets))
    reach = max(float(np.nanmax(np.linalg.norm((j - j[:, :1])[..., [0, 2]], axis=-1))) for j in joint_sets)
    headroom = 0.15 * unit  # above the head, for the caption and the panel title
    half = max(1.0 * unit, (top - floor) / 2 + 0.35 * unit + headroom, reach + 0.35 * unit)
    return _View(floor_y=floor, centre_y=(top + floor) / 2 + headroom, half=half, unit=unit, size=size, fps=fps)


def render_frames(
    motions: Any | Sequence[Any],
    caption: str = "",
    titles: Sequence[str] | None = None,
    skeleton: Skeleton = HUMANML3D,
    *,
    size: int = 320,
    frame_indices: Sequence[int] | None = None,
    floor_y: float | None = 0.0,
    fps: float | None = None,
    azimuth: float = 35.0,
    elevation: float = 18.0,
) -> np.ndarray:
    """RGB frames (N, size, n_panels * size, 3) uint8 of one motion or several side by side.

    ``motions`` is one motion or a list of them, each joints (T, J, 3) or un-normalised features
    (T, D), numpy or torch. Panels play in sync for the longest motion's length; shorter ones hold
    their last pose. ``frame_indices`` picks frames (default all); ``floor_y`` None puts the floor
    under the lowest joint instead of at y = 0 (HumanML3D's floor); ``fps`` (default the skeleton's)
    only labels the clock.
    """
    if isinstance(motions, (list, tuple)):
        joint_sets = [_to_joints(m, skeleton) for m in motions]
    else:
        joint_sets = [_to_joints(motions, skeleton)]
    if not joint_sets:
        raise ValueError("render_frames: no motion given")
    titles = list(titles) if titles is not None else [""] * len(joint_sets)
    if len(titles) != len(joint_sets):
        raise ValueError(f"render_frames: {len(joint_sets)} motions but {len(titles)} titles")
    if size < 64:
        raise ValueError(f"render_frames: size must be at least 64 pixels, got {size}")
    n_frames = max(len(j) for j in joint_sets)
    indices = list(range(n_frames)) if frame_indices is None else [int(i) for i in frame_indices]
    bad = [i for i in indices if not 0 <= i < n_frames]
    if bad:
        raise ValueError(f"render_frames: frame indices {bad[:5]} outside 0..{n_frames - 1}")

    n = len(joint_sets)
    view = _view(joint_sets, skeleton, floor_y, size, fps if fps is not None else skeleton.fps)
    camera = _Camera(azimuth, elevation, distance=8.0 * view.unit)
    fig = Figure(figsize=(n * size / 100, size / 100), dpi=100, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    caption_lines = textwrap.wrap(caption, width=max(20, int(n * size / 6.2)), max_lines=3, placeholder=" ...")
    # Panel titles sit under the caption, which spans all panels at the top.
    title_y = 0.97 - 0.055 * len(caption_lines) * 320 / size
    panels = []
    for k, (joints, title) in enumerate(zip(joint_sets, titles, strict=True)):
        ax = fig.add_axes((k / n, 0.0, 1.0 / n, 1.0))
        panels.append(_Panel(ax, joints, skeleton, camera, view, title, title_y))
    if caption_lines:
        fig.text(0.5, 0.985, "\n".join(caption_lines), ha="center", va="top", fontsize=8, color="#222222")

    out = np.empty((len(indices), size, n * size, 3), dtype=np.uint8)
    for i, t in enumerate(indices):
        for panel in panels:
            panel.update(t)
        canvas.draw()
        out[i] = np.asarray(canvas.buffer_rgba())[..., :3]
    return out


def _write_gif(frames: np.ndarray, path: str, fps: float, colours: int = 32) -> None:
    # One palette for all frames, without dithering: 10x faster and ~2x smaller than per-frame palettes.
    sample = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=0)
    palette = Image.fromarray(sample).quantize(colours, dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=1000.0 / fps, loop=0)


def write_video(frames: np.ndarray, out_path: str | os.PathLike, fps: float) -> Path:
    """Write RGB frames (N, H, W, 3) to .gif (Pillow) or .mp4 (needs imageio-ffmpeg), atomically."""
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"{out_path}: unsupported video format {suffix!r}; use .gif or .mp4")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise RuntimeError(
            f"{out_path}: writing .mp4 needs the imageio-ffmpeg package, which is not installed; "
            "write a .gif instead (or install imageio-ffmpeg)"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (N, H, W, 3) with N >= 1, got {frames.dtype} {frames.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if suffix == ".gif":
        write_all({out_path: lambda tmp: _write_gif(frames, tmp, fps)})
    else:
        import imageio.v3 as iio

        write_all({out_path: lambda tmp: iio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264")})
    return out_path


def _playback(n_frames: int, every: int, fps: float | None, skeleton: Skeleton) -> tuple[list[int], float]:
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    # Subsampling keeps real-time speed by lowering the playback rate.
    return list(range(0, n_frames, every)), (fps if fps is not None else skeleton.fps) / every


def render_motion(
    motion: Any,
    out_path: str | os.PathLike,
    title: str = "",
    skeleton: Skeleton = HUMANML3D,
    fps: float | None = None,
    *,
    size: int = 320,
    every: int = 1,
    floor_y: float | None = 0.0,
) -> Path:
    """Render one motion (joints or un-normalised features) to ``out_path`` (.gif or .mp4).

    ``fps`` defaults to the skeleton's; ``every`` keeps every k-th frame (playback stays real time).
    """
    joints = _to_joints(motion, skeleton)
    indices, rate = _playback(len(joints), every, fps, skeleton)
    frames = render_frames(joints, title, None, skeleton, size=size, frame_indices=indices, floor_y=floor_y, fps=fps)
    return write_video(frames, out_path, rate)


def render_side_by_side(
    motion_a: Any,
    motion_b: Any,
    out_path: str | os.PathLike,
    titles: Sequence[str] = ("A", "B"),
    caption: str = "",
    skeleton: Skeleton = HUMANML3D,
    fps: float | None = None,
    *,
    size: int = 320,
    every: int = 1,
    floor_y: float | None = 0.0,
) -> Path:
    """Two motions in sync in panels sharing scale and floor, the caption above both."""
    joint_sets = [_to_joints(motion_a, skeleton), _to_joints(motion_b, skeleton)]
    indices, rate = _playback(max(len(j) for j in joint_sets), every, fps, skeleton)
    frames = render_frames(
        joint_sets, caption, titles, skeleton, size=size, frame_indices=indices, floor_y=floor_y, fps=fps
    )
    return write_video(frames, out_path, rate)
