"""``motionpref generate``: tiny trained models laid out as the pipeline leaves them, sampled into a grid GIF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import Result
from PIL import Image, ImageSequence
from typer.testing import CliRunner

from motionpref.cli import app
from motionpref.config import SamplingConfig, load_params
from motionpref.generate import CAPTION_LINE, CAPTION_PAD, FOOTER, PANEL, caption_programs, sample_model
from motionpref.loading import dataset_spec, load_generator
from motionpref.motion.dataset import read_captions, read_split
from motionpref.pipeline import artifacts
from motionpref.synth.world import build_dataset, read_programs
from tests.policies import tiny_generator, tiny_policy
from tests.test_diffusion import MDM_TINY, mdm

ROOT = Path(__file__).resolve().parents[1]
FREE = "a person kicks with the left leg"  # no caption the synthetic world wrote: no judge scores
HEADER = CAPTION_PAD + CAPTION_LINE  # one caption line
runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    build_dataset(root / artifacts.DATASET, 6, seed=0, mirror=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"  # 24 motion tokens at most, 2 DDIM steps
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    tiny_policy().save(root / artifacts.POLICY_SFT)
    tiny_generator(tiny_policy(), SamplingConfig(), feature_dim=263).vqvae.save(root / artifacts.VQVAE)
    mdm(MDM_TINY.model_copy(update={"feature_dim": 263})).save(root / artifacts.policy("mdm"))
    return root


@pytest.fixture
def run(project: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``motionpref generate ARGS`` in the project folder."""
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return lambda *args: runner.invoke(app, ["generate", *args])


def frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]


def test_the_grid_has_a_row_per_model_and_a_column_per_seed(run: Callable[..., Result], tmp_path: Path) -> None:
    one, grid = tmp_path / "one.gif", tmp_path / "grid.gif"
    assert run(FREE, "--model", "mdm", "--length", "12", "--out", str(one)).exit_code == 0
    result = run(FREE, "--model", "sft,mdm", "--seeds", "3", "--length", "12", "--out", str(grid))
    assert result.exit_code == 0, result.output
    assert "sft: sampling 3 motions" in result.stderr and "mdm: sampling 3 motions" in result.stderr
    assert frames(one)[0].shape == (HEADER + PANEL, PANEL, 3)
    last = frames(grid)[-1]
    assert last.shape == (HEADER + 2 * PANEL, 3 * PANEL, 3)
    for r in range(2):
        for c in range(3):
            panel = last[HEADER + r * PANEL : HEADER + (r + 1) * PANEL, c * PANEL : (c + 1) * PANEL]
            assert (panel.min(axis=-1) < 100).sum() > 200, f"panel {r}, {c} has no figure"


def test_the_same_seeds_give_the_same_bytes(run: Callable[..., Result], tmp_path: Path) -> None:
    paths = [tmp_path / "a.gif", tmp_path / "b.gif"]
    for path in paths:
        assert run(FREE, "--model", "mdm,sft", "--seeds", "2", "--length", "8", "--out", str(path)).exit_code == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_each_seed_draws_its_own_motion(project: Path) -> None:
    params = load_params(project / "params.yaml")
    spec = dataset_spec(project, params.data)
    val = [e.length for e in spec.load("val")]
    for model in ("sft", "mdm"):
        generator = load_generator(project, model, params, spec)
        samples = sample_model(generator, FREE, [0, 1, 2], None, lambda: val)
        # alone or in a batch of three, seed 2 draws the same motion (batched float kernels round apart)
        again = sample_model(generator, FREE, [2], None, lambda: val)
        np.testing.assert_allclose(again[0].features, samples[2].features, rtol=1e-5, atol=1e-5)
        a, b = [s.features for s in samples if s.valid][:2]
        assert a.shape != b.shape or not np.allclose(a, b), f"{model}: two seeds drew one motion"
        if model == "mdm":  # no --length: a val clip's length, drawn with the seed
            assert all(len(s.features) in val for s in samples)


def test_a_caption_of_the_world_is_judged_and_a_free_one_says_why_not(
    project: Path, run: Callable[..., Result], tmp_path: Path
) -> None:
    dataset = project / artifacts.DATASET
    clip = read_split(dataset, "train")[0]
    caption = read_captions(dataset, clip)[0].text
    said = f"  {caption.upper().rstrip('.')}!"  # case and punctuation aside, the same caption
    assert [p.key() for p in caption_programs(project, said)] == [read_programs(dataset)[clip][0].key()]
    judged, free = tmp_path / "judged.gif", tmp_path / "free.gif"
    result = run(said, "--model", "mdm", "--seeds", "2", "--length", "8", "--out", str(judged))
    assert result.exit_code == 0 and "no judge scores" not in result.stderr
    first = frames(judged)[0]
    assert (len(first) - CAPTION_PAD - PANEL - FOOTER) % CAPTION_LINE == 0  # caption lines, panels, score line
    for c in range(2):
        assert (first[-FOOTER:, c * PANEL : (c + 1) * PANEL].min(axis=-1) < 100).any(), f"no score under panel {c}"
    result = run(FREE, "--model", "mdm", "--seeds", "2", "--length", "8", "--out", str(free))
    assert result.exit_code == 0
    assert [line for line in result.stderr.splitlines() if "no judge scores" in line] == [
        "no judge scores: the synthetic judge scores a motion against the program behind a caption, and neither "
        "the dataset nor the prompts have this caption"
    ]
    assert len(frames(free)[0]) == HEADER + PANEL


def refused(result: Result, out: Path, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    # atomic writes: no output, and no temp file beside it
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize(
    ("caption", "args", "message"),
    [
        (FREE, ["--model", "sft,ppo"], "--model: no trained model 'ppo'; trained under"),
        ("   ", [], "the caption is empty"),
        (FREE, ["--seeds", "0"], "--seeds: expected at least 1 sample per model, got 0"),
        (FREE, ["--model", "mdm", "--length", "0"], "--length: expected at least 1 frame, got 0"),
    ],
)
def test_a_mistake_is_one_line_and_exit_code_2(
    run: Callable[..., Result], tmp_path: Path, caption: str, args: list[str], message: str
) -> None:
    out = tmp_path / "kick.gif"
    refused(run(caption, *args, "--out", str(out)), out, message)


def test_an_unknown_model_lists_the_trained_ones(run: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "kick.gif"
    refused(run(FREE, "--model", "dpo", "--out", str(out)), out, "data/models: mdm, sft")


def test_an_output_that_cannot_be_written_is_refused(run: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where a folder should be")
    (tmp_path / "folder.gif").mkdir()
    for out, message in [
        (tmp_path / "file" / "kick.gif", f"({tmp_path / 'file'} is not a writable folder)"),
        (tmp_path / "kick.png", "expected a .gif or .mp4 file, got .png"),
        (tmp_path / "folder.gif", "is a folder"),
    ]:
        result = run(FREE, "--out", str(out))
        assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.gif"]


def test_a_token_policy_without_its_vqvae_is_refused(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = tmp_path / "bare"  # the pipeline's layout, the VQ-VAE not trained yet
    (bare / artifacts.MODELS).mkdir(parents=True)
    for path in ("params.yaml", artifacts.DATASET, artifacts.POLICY_SFT):
        (bare / path).symlink_to(project / path)
    monkeypatch.chdir(bare)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    out = bare / "out" / "kick.gif"
    result = runner.invoke(app, ["generate", FREE, "--model", "sft", "--out", str(out)])
    refused(result, out, "data/models/vqvae/config.json: not found")
    assert not out.parent.exists()


def test_the_qualitative_figure_is_a_block_per_held_out_prompt_and_a_panel_per_model(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import pandas as pd

    from motionpref.prefs.prompts import write_prompts

    copy = tmp_path / "project"
    shutil.copytree(project, copy, symlinks=True)
    dataset = copy / artifacts.DATASET
    programs = {p.key(): p for p, _ in read_programs(dataset).values()}
    chosen = list(programs.values())[:3]
    # the win rates' pool: test programs only; a train prompt is never drawn
    table = pd.DataFrame(
        {
            "prompt_id": ["p0", "p1", "p2"],
            "text": ["a person walks", "someone claps", "a person waves"],
            "program": [p.to_json() for p in chosen],
            "source": ["synthetic"] * 3,
            "group": [p.key() for p in chosen],
            "split": ["test", "test", "train"],
        }
    )
    write_prompts(table, copy / artifacts.PROMPTS)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    outs = [tmp_path / "a.gif", tmp_path / "b.gif"]
    for out in outs:
        result = runner.invoke(app, ["qualitative", "--model", "sft,mdm", "--captions", "5", "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("prompt ")] == [
        "prompt 1/2: a person walks",
        "prompt 2/2: someone claps",
    ]
    assert outs[0].read_bytes() == outs[1].read_bytes()  # each prompt's own seed: the same figure again
    last = frames(outs[0])[-1]
    block = HEADER + PANEL + FOOTER  # a one-line caption, a row of panels, the judge's scores
    assert last.shape == (2 * block, 2 * PANEL, 3)
    for b in range(2):
        for c in range(2):
            top = b * block + HEADER
            panel = last[top : top + PANEL, c * PANEL : (c + 1) * PANEL]
            assert (panel.min(axis=-1) < 100).sum() > 200, f"block {b}, panel {c} has no figure"
            score = last[top + PANEL : top + PANEL + FOOTER, c * PANEL : (c + 1) * PANEL]
            assert (score.min(axis=-1) < 100).any(), f"no judge score under block {b}, panel {c}"
    result = runner.invoke(app, ["qualitative", "--captions", "0", "--out", str(tmp_path / "c.gif")])
    assert result.exit_code == 2 and "--captions: expected at least 1 prompt, got 0" in result.output
    (copy / artifacts.PROMPTS).unlink()
    result = runner.invoke(app, ["qualitative", "--out", str(tmp_path / "c.gif")])
    assert result.exit_code == 2 and "prompts.parquet: missing (run the generate_prompts stage)" in result.output
