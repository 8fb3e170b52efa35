"""``motionpref generate``: one caption through trained models, several seeds each, drawn as one animation.

The grid has a row per model and a column per seed; every panel shares one scale and floor and all play in sync,
so the models' motions compare at a glance. Sample ``s`` of a model is drawn with seed ``s``, as the pipeline's
samplers seed each row, so the same command gives the same animation.

On synthetic data each panel carries the synthetic judge's score of its motion. The judge scores a motion
against an action program, not against words, and no parser turns free text into a program: a caption is scored
when the world wrote it, as a dataset clip's caption or a prompt of ``prompts.parquet``, matched without regard
to case and punctuation.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from motionpref.config import Params
from motionpref.loading import dataset_spec, load_generator, trained_models
from motionpref.models.diffusion_generator import DiffusionGenerator
from motionpref.models.generator import MotionGenerator
from motionpref.motion.dataset import DatasetSpec, read_captions
from motionpref.motion.render import render_frames, write_video
from motionpref.motion.skeleton import Skeleton
from motionpref.pipeline import artifacts, seed_everything
from motionpref.prefs.prompts import normalise, read_prompts
from motionpref.synth.judge import judge, judged_joints
from motionpref.synth.programs import Program
from motionpref.synth.world import read_programs

PANEL = 240  # pixels a panel side
FOOTER = 18  # pixels of the score line under each row of panels
CAPTION_LINE = 13  # pixels a caption line takes in the header
CAPTION_PAD = 8


@dataclass(frozen=True)
class Sample:
    seed: int
    features: np.ndarray  # (T, D) un-normalised; for a failed token sample, the generator's fallback pose
    valid: bool  # False: every attempt of a token policy failed to close its motion
    attempts: int  # 1 when the seed's first sample was a motion; a token policy's retries take new seeds


def check_out(out: Path) -> None:
    """Refuse an output the animation could not be written to, before any sampling."""
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"--out {out}: expected a .gif or .mp4 file, got {suffix or 'no suffix'}")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(f"--out {out}: writing .mp4 needs the imageio-ffmpeg package, which is not installed")
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder")
    folder = next(p for p in out.absolute().parents if p.exists())  # where the missing folders would be made
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write there ({folder} is not a writable folder)")


def caption_programs(root: Path, caption: str) -> list[Program]:
    """The distinct programs behind ``caption`` where the synthetic world wrote it: the whole-clip captions of the
    dataset under ``root`` and the prompts of ``prompts.parquet``, compared in ``prompts.normalise``'s form."""
    key = normalise(caption)
    found: dict[str, Program] = {}
    dataset = root / artifacts.DATASET
    for clip_id, (program, _) in read_programs(dataset).items():
        if any(c.is_whole_clip and normalise(c.text) == key for c in read_captions(dataset, clip_id)):
            found[program.key()] = program
    if (root / artifacts.PROMPTS).is_file():
        prompts = read_prompts(root / artifacts.PROMPTS)
        for text, program_json in zip(prompts["text"], prompts["program"], strict=True):
            if isinstance(program_json, str) and normalise(text) == key:
                program = Program.from_json(program_json)
                found[program.key()] = program
    return list(found.values())


def sample_model(
    generator: MotionGenerator | DiffusionGenerator,
    caption: str,
    seeds: Sequence[int],
    length: int | None,
    val_lengths: Callable[[], list[int]],
) -> list[Sample]:
    """One sample of ``caption`` per seed. A diffusion policy's motions have ``length`` frames, or without it a
    length drawn from ``val_lengths()`` with each seed, as the win-rate study draws them; a token policy ends its
    motions itself, and a seed whose every attempt fails stands as the generator's fallback pose."""
    captions = [caption] * len(seeds)
    if isinstance(generator, DiffusionGenerator):
        if length is None:
            lengths = replace(generator, lengths=val_lengths()).prompt_lengths(seeds)
        else:
            lengths = [length] * len(seeds)
        return [Sample(s, f, True, 1) for s, f in zip(seeds, generator.features(captions, lengths, seeds), strict=True)]
    gen = generator.generate(captions, seeds)
    return [
        Sample(s, f if ok else generator.fallback_motion(), ok, attempts)
        for s, f, ok, attempts in zip(seeds, gen.features, gen.valid, gen.attempts, strict=True)
    ]


def _title(model: str, sample: Sample, with_seed: bool = True) -> str:
    name = f"{model}, seed {sample.seed}" if with_seed else model
    if not sample.valid:
        return f"{name}: no motion"
    return name + (f" (try {sample.attempts})" if sample.attempts > 1 else "")


def _judged(program: Program, sample: Sample, skeleton: Skeleton) -> str:
    if not sample.valid:
        return "no motion"
    score = judge(program, judged_joints(np.asarray(sample.features, np.float32), skeleton))
    return f"judge {score:.2g}"  # a soft AND of criteria: a near miss scores orders of magnitude below 1


def _text_band(texts: Sequence[str], width: int, height: int) -> np.ndarray:
    """RGB (height, width, 3): each text centred in its own equal column."""
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    for k, text in enumerate(texts):
        fig.text((k + 0.5) / len(texts), 0.5, text, ha="center", va="center", fontsize=8, color="#222222")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def render_grid(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[Sequence[str]],
    caption: str,
    footers: Sequence[Sequence[str]] | None,
    skeleton: Skeleton,
) -> np.ndarray:
    """RGB frames (N, H, W, 3) of equally long ``rows`` of motions (un-normalised features): the caption across
    the top, then each row of ``PANEL``-pixel panels titled by ``titles``, with a line of ``footers`` under it when
    given. One ``render_frames`` strip draws every panel, so all share one scale and floor and play in sync."""
    n_cols = len(rows[0])
    strip = render_frames(
        [m for row in rows for m in row], "", [t for row in titles for t in row], skeleton, size=PANEL
    )
    width = n_cols * PANEL
    lines = textwrap.wrap(caption, width=max(20, int(width / 6.2)), max_lines=3, placeholder=" ...")
    header = _text_band(["\n".join(lines)], width, CAPTION_PAD + CAPTION_LINE * len(lines))
    footer = FOOTER if footers is not None else 0
    out = np.empty((len(strip), len(header) + len(rows) * (PANEL + footer), width, 3), np.uint8)
    out[:, : len(header)] = header
    y = len(header)
    for r in range(len(rows)):
        out[:, y : y + PANEL] = strip[:, :, r * width : (r + 1) * width]
        y += PANEL
        if footers is not None:
            out[:, y : y + footer] = _text_band(footers[r], width, footer)
            y += footer
    return out


def _load(
    root: Path, params: Params, models: Sequence[str], out: Path
) -> tuple[DatasetSpec, dict[str, MotionGenerator | DiffusionGenerator]]:
    """The dataset and each named model's sampler (``load_generator``), every one loaded before any sampling so
    a missing VQ-VAE or a broken folder stops the command at once; a wrong name or output is a ValueError."""
    if not models:
        raise ValueError("--model: name at least one trained model")
    trained = trained_models(root)
    unknown = [m for m in models if m not in trained]
    if unknown:
        have = ", ".join(trained) if trained else "none (train them with dvc repro)"
        names = ", ".join(repr(m) for m in unknown)
        raise ValueError(f"--model: no trained model {names}; trained under {root / artifacts.MODELS}: {have}")
    check_out(out)
    seed_everything(params.seed, params.threads)  # as a stage: its thread count (the same bits), quiet libraries
    spec = dataset_spec(root, params.data)
    return spec, {m: load_generator(root, m, params, spec) for m in models}


def _val_lengths(spec: DatasetSpec) -> Callable[[], list[int]]:
    @cache
    def val_lengths() -> list[int]:
        lengths = [e.length for e in spec.load("val")]
        if not lengths:
            raise ValueError(f"{spec.root}: no val clips to draw a diffusion policy's length from; pass --length")
        return lengths

    return val_lengths


def generate_grid(
    root: Path,
    params: Params,
    caption: str,
    models: Sequence[str],
    n_seeds: int,
    length: int | None,
    out: Path,
    log: Callable[[str], None],
) -> Path:
    """Sample ``caption`` from each trained model of ``root`` (``data/models/policy_<model>``) with seeds
    0..n_seeds-1 and write the grid animation to ``out`` atomically; ``log`` hears progress and why judge scores
    are missing. A problem a user can fix is a ValueError (or the loaders' FileNotFoundError, CheckpointError)
    raised before anything is written."""
    if not caption.strip():
        raise ValueError("the caption is empty; say what the person should do")
    if n_seeds < 1:
        raise ValueError(f"--seeds: expected at least 1 sample per model, got {n_seeds}")
    if length is not None and length < 1:
        raise ValueError(f"--length: expected at least 1 frame, got {length}")
    models = list(dict.fromkeys(models))
    spec, generators = _load(root, params, models, out)
    program = None
    if params.data.source == "synthetic":
        programs = caption_programs(root, caption)
        if len(programs) == 1:
            program = programs[0]
        elif programs:
            log(f"no judge scores: {len(programs)} different programs have this caption, and the judge needs one")
        else:
            log(
                "no judge scores: the synthetic judge scores a motion against the program behind a caption, and "
                "neither the dataset nor the prompts have this caption"
            )

    seeds = list(range(n_seeds))
    rows = []
    for model, generator in generators.items():
        log(f"{model}: sampling {n_seeds} motion{'s' if n_seeds > 1 else ''}")
        rows.append(sample_model(generator, caption, seeds, length, _val_lengths(spec)))
    footers = None if program is None else [[_judged(program, x, spec.skeleton) for x in row] for row in rows]
    log(f"rendering {len(rows)} x {n_seeds} panels")
    frames = render_grid(
        [[s.features for s in row] for row in rows],
        [[_title(m, s) for s in row] for m, row in zip(models, rows, strict=True)],
        caption,
        footers,
        spec.skeleton,
    )
    return write_video(frames, out, spec.skeleton.fps)


def qualitative_grid(
    root: Path, params: Params, models: Sequence[str], n_captions: int, out: Path, log: Callable[[str], None]
) -> Path:
    """SoPo's Fig. 1 for our models: ``n_captions`` held-out prompts (the test programs of ``prompts.parquet``,
    which no preference pair was sampled for; a seeded draw, the win rates' pool), each sampled once by every
    model with the prompt's own seed (the same for every model, as the win-rate study seeds it), a block per
    prompt of one panel per model with the synthetic judge's score of the prompt's program under each. The
    samplers are the evaluation's, retries included: a panel says when its motion took more than one try."""
    from motionpref.evaluate.winrate import held_out_prompts, prompt_seeds

    if n_captions < 1:
        raise ValueError(f"--captions: expected at least 1 prompt, got {n_captions}")
    models = list(dict.fromkeys(models))
    prompts_path = root / artifacts.PROMPTS
    qualitative_seed = params.stage_seed("qualitative")
    chosen = held_out_prompts(read_prompts(prompts_path), n_captions, qualitative_seed, str(prompts_path))
    spec, generators = _load(root, params, models, out)
    seeds = prompt_seeds(qualitative_seed, chosen["prompt_id"].tolist())
    blocks = []
    for k, (text, program_json, seed) in enumerate(zip(chosen["text"], chosen["program"], seeds, strict=True)):
        log(f"prompt {k + 1}/{len(chosen)}: {text}")
        program = Program.from_json(program_json) if isinstance(program_json, str) else None
        row = [sample_model(g, text, [seed], None, _val_lengths(spec))[0] for g in generators.values()]
        footers = None if program is None else [[_judged(program, x, spec.skeleton) for x in row]]
        titles = [[_title(m, x, with_seed=False) for m, x in zip(models, row, strict=True)]]
        blocks.append(render_grid([[x.features for x in row]], titles, text, footers, spec.skeleton))
    # blocks play in sync; a shorter one holds its last frame
    n = max(len(b) for b in blocks)
    frames = np.concatenate([np.concatenate([b, np.repeat(b[-1:], n - len(b), 0)]) for b in blocks], axis=1)
    return write_video(frames, out, spec.skeleton.fps)
