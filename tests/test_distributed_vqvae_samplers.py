"""Two processes under ``accelerate launch`` (gloo) do what one does: the VQ-VAE trainer (shared batches of
windows, the EMA codebook's statistics summed over the processes), the pair sampler and the win-rate sampler
(prompts shared, each motion drawn from its own seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from motionpref.config import load_params
from motionpref.models.vqvae import MotionVQVAE
from motionpref.pipeline import artifacts, run_stage
from motionpref.prefs.pairs import read_pairs
from tests.distributed_fixtures import LOSS_RTOL, WEIGHT_ATOL, in_project, kept, max_diff, one_and_two, set_smoke


@pytest.mark.slow
def test_vqvae_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 7 windows splits 4 + 3, so the shares weigh 8/7 and 6/7: the losses, the weights and the EMA
    codebook (its buffers included) agree to float rounding, and so do the token files, which the main process
    writes. A code could flip where a latent lies within rounding of the midpoint of two codes; none does here."""
    with kept(project, artifacts.VQVAE, artifacts.TOKENS, artifacts.stage_report("train_vqvae")):
        runs = one_and_two(
            project,
            monkeypatch,
            "train_vqvae",
            outputs=(artifacts.VQVAE, artifacts.TOKENS),
            edit=lambda params: set_smoke(params, "vqvae.train", batch_size=7),
        )
    one, two = runs[1].history["vqvae/train_loss"], runs[2].history["vqvae/train_loss"]
    assert len(one) == len(two) >= 3
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    assert max(one) - min(one) > 100 * LOSS_RTOL * max(one)  # the loss moves far more than the runs differ
    for key in ("vqvae/train_commit", "vqvae/train_perplexity", "vqvae/val_recon_loss"):
        assert runs[2].metrics[key] == pytest.approx(runs[1].metrics[key], rel=LOSS_RTOL), key

    trained = {n: MotionVQVAE.load(runs[n].outputs[artifacts.VQVAE]) for n in (1, 2)}
    weights = {n: model.state_dict() for n, model in trained.items()}
    assert max_diff(weights[1], weights[2]) < WEIGHT_ATOL
    torch.manual_seed(load_params(project / "params.yaml").stage_seed("train_vqvae"))  # train_vqvae's initial draw
    start = MotionVQVAE(trained[1].config).state_dict()
    moved = max((weights[1][k] - start[k]).abs().max().item() for k, _ in trained[1].named_parameters())
    assert moved > 10 * WEIGHT_ATOL
    assert (weights[1]["quantizer.codebook"] - start["quantizer.codebook"]).abs().max() > 10 * WEIGHT_ATOL

    tokens = {n: runs[n].outputs[artifacts.TOKENS] for n in (1, 2)}
    names = sorted(p.name for p in tokens[1].iterdir())
    assert names == sorted(p.name for p in tokens[2].iterdir()) and names
    for name in names:
        assert np.array_equal(np.load(tokens[1] / name), np.load(tokens[2] / name)), name


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["sft", "mdm"])
def test_pairs_in_two_processes_are_the_pairs_of_one(
    policy: str, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process samples half of the prompts, each motion from its pair's seed: the table is one process's.
    The motions agree to float32 rounding: the VQ-VAE decodes the samples of one length together, and a share
    groups them otherwise."""
    in_project(project, monkeypatch)
    if policy == "mdm" and not (project / artifacts.policy("mdm")).is_dir():
        run_stage("train_diffusion", project / "params.yaml", item="mdm")
    table, motions = artifacts.prefs_path(policy, artifacts.PAIRS), artifacts.prefs_path(policy, artifacts.MOTIONS)
    previews = artifacts.prefs_path(policy, artifacts.PREVIEWS)
    with kept(project, table, motions, previews, artifacts.prefs_report("pairs_stats", policy)):
        runs = one_and_two(project, monkeypatch, "sample_pairs", policy, outputs=(motions, table))
    assert pq.read_table(runs[2].outputs[table]).equals(pq.read_table(runs[1].outputs[table]))
    pairs = {n: read_pairs(runs[n].outputs[table]) for n in (1, 2)}
    assert runs[2].metrics == runs[1].metrics  # the statistics
    # the answer is not trivial: several pairs, their two motions drawn apart
    assert len(pairs[1]) >= 4
    files = sorted(p.name for p in runs[1].outputs[motions].iterdir())
    assert files == sorted(p.name for p in runs[2].outputs[motions].iterdir()) and len(files) == 2 * len(pairs[1])
    differ = 0
    for row in pairs[1].itertuples():
        a, b = (np.load(runs[1].outputs[motions] / f"{row.pair_id}_{side}.npy") for side in "ab")
        differ += a.shape != b.shape or not np.allclose(a, b)
        for side, mine in (("a", a), ("b", b)):
            theirs = np.load(runs[2].outputs[motions] / f"{row.pair_id}_{side}.npy")
            np.testing.assert_allclose(theirs, mine, rtol=1e-5, atol=1e-5)
    assert differ > 0


@pytest.mark.slow
def test_winrate_in_two_processes_is_the_study_of_one(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both models sample the same 7 prompts (4 + 3 per process) at two temperatures, and every process judges
    the gathered motions: the study, which judges motion i against prompt i, is one process's to the last digit."""
    in_project(project, monkeypatch)
    if not (project / artifacts.policy("dpo")).is_dir():
        run_stage("finetune", project / "params.yaml", item="dpo")
    report = artifacts.winrate_report("dpo", "json")
    runs = one_and_two(
        project,
        monkeypatch,
        "winrate",
        "dpo",
        outputs=(report,),
        edit=lambda params: set_smoke(params, "winrate", prompts=7, temperatures=[1.2, 2.0]),
    )
    one, two = (json.loads(runs[n].outputs[report].read_text()) for n in (1, 2))
    assert two == one
    assert one["prompts"] == 7 and [cell["n"] for cell in one["cells"]] == [7, 7]
    assert runs[2].metrics == runs[1].metrics
