"""Two processes under ``accelerate launch`` (gloo) train the diffusion policies as one process does: MDM's and MLD's
pretraining (``train_diffusion``: MLD's VAE, then its latent denoiser) and Diffusion-DPO on labelled pairs of MDM
samples (``finetune@mdm_dpo``), each global batch drawn whole in every process and shared out. Batches of 5 split
3 + 2, so the shares are uneven; dropout is off, its masks being drawn per process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from motionpref.config import load_params
from motionpref.models.diffusion import MDMPolicy, MLDPolicy, build_text_encoder, load_policy
from motionpref.pipeline import StageContext, run_stage
from motionpref.tracking import StageRun
from tests.distributed_fixtures import (
    LOSS_RTOL,
    WEIGHT_ATOL,
    assert_histories,
    in_project,
    kept,
    max_diff,
    one_and_two,
    set_smoke,
    without_key_bias,
)


def _no_dropout(params: dict[str, Any]) -> None:
    for family in ("mdm", "mld"):
        params["diffusion"][family]["text"]["dropout"] = 0.0
    params["diffusion"]["mdm"]["model"]["dropout"] = 0.0
    params["diffusion"]["mld"]["model"].update(vae_dropout=0.0, denoiser_dropout=0.0)


def _pretraining(family: str) -> Any:
    def edit(params: dict[str, Any]) -> None:
        _no_dropout(params)
        for stage in ("train", "vae_train") if family == "mld" else ("train",):
            set_smoke(
                params, f"diffusion.{family}.{stage}", batch_size=5, log_every=1
            )  # every step's loss, uneven shares

    return edit


@pytest.fixture
def kept_policies(project: Path) -> Iterator[None]:
    """The diffusion policies and their reports put back as they were (other tests start from them)."""
    with kept(
        project, *(p for f in ("mdm", "mld") for p in (f"data/models/policy_{f}", f"reports/train_diffusion_{f}.json"))
    ):
        yield


def _initial(project: Path, family: str) -> dict[str, torch.Tensor]:
    """The untrained policy train_diffusion@<family> starts from, built as the stage builds it."""
    params = load_params(project / f"params_train_diffusion_{family}_1.yaml")  # one_and_two's
    cfg = getattr(params.diffusion, family)
    spec = StageContext(project, StageRun.off()).dataset(params.data)
    entries = spec.load("train")
    config = cfg.model.model_copy(update={"feature_dim": int(spec.stats()[0].shape[0])})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.stage_seed(f"train_diffusion@{family}"))
        text = build_text_encoder(cfg.text, [c.text for e in entries for c in e.captions])
        return without_key_bias((MDMPolicy if family == "mdm" else MLDPolicy)(config, text).state_dict())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return without_key_bias(load_policy(path).state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_diffusion_pretraining_in_two_processes_trains_what_one_does(
    family: str, project: Path, monkeypatch: pytest.MonkeyPatch, kept_policies: None
) -> None:
    out = f"data/models/policy_{family}"
    runs = one_and_two(project, monkeypatch, "train_diffusion", family, (out,), _pretraining(family))
    one, two = runs[1], runs[2]
    names = ["vae/loss", "denoiser/loss"] if family == "mld" else ["denoiser/loss"]
    assert_histories(runs, names)
    for name in names:
        assert len(one.history[name]) >= 4, name
        # the bound means something: the loss moves across steps far more than the two runs differ
        assert max(one.history[name]) - min(one.history[name]) > 100 * LOSS_RTOL * max(one.history[name]), name
    weights = {n: _weights(runs[n].outputs[out]) for n in (1, 2)}
    assert max_diff(weights[1], weights[2]) < WEIGHT_ATOL
    assert max_diff(weights[1], _initial(project, family)) > 10 * WEIGHT_ATOL
    report = json.loads((project / "reports" / f"train_diffusion_{family}.json").read_text())
    assert report["denoiser_steps"] == len(two.history["denoiser/loss"])  # the main process wrote the report


@pytest.mark.slow
def test_diffusion_dpo_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process computes its share of every batch's labelled pairs; the averaged gradient is the batch's."""
    in_project(project, monkeypatch)
    if not (project / "data" / "models" / "policy_mdm").is_dir():
        run_stage("train_diffusion", project / "params.yaml", item="mdm")
    if not (project / "data" / "prefs" / "mdm").is_dir():
        for name in ("sample_pairs", "label", "ingest_labels"):
            run_stage(name, project / "params.yaml", item="mdm")

    def edit(params: dict[str, Any]) -> None:
        params["algo"]["diffusion"]["lr"] = 1e-3  # a few smoke steps must move the weights past the bound below
        params["profiles"]["smoke"]["algo"]["diffusion"]["batch_size"] = 5  # shares of 3 and 2

    out = "data/models/policy_mdm_dpo"
    runs = one_and_two(project, monkeypatch, "finetune", "mdm_dpo", (out,), edit)
    one, two = runs[1], runs[2]
    assert len(one.history["dpo/loss"]) == len(two.history["dpo/loss"]) >= 3
    assert two.history["dpo/loss"] == pytest.approx(one.history["dpo/loss"], rel=LOSS_RTOL)
    # the last epoch's means over the whole batches' gathered pairs (not the accuracy, which counts signs of
    # differences that start at 0, policy = reference, up to float rounding)
    for key in ("loss", "first_loss"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], rel=LOSS_RTOL), key
    assert two.metrics["steps"] == one.metrics["steps"]
    report = json.loads((project / "reports" / "finetune" / "mdm_dpo.json").read_text())
    assert report["steps"] == len(two.history["dpo/loss"])  # the main process wrote the report
    weights = {n: _weights(runs[n].outputs[out]) for n in (1, 2)}
    before = _weights(project / "data" / "models" / "policy_mdm")
    assert max_diff(weights[1], weights[2]) < WEIGHT_ATOL
    assert max_diff(weights[1], before) > 10 * WEIGHT_ATOL


@pytest.mark.slow
def test_modipo_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MoDiPO trains on its best-vs-worst pairs through the same sharded Diffusion-DPO pass as labelled pairs."""
    in_project(project, monkeypatch)
    if not (project / "data" / "models" / "policy_mdm").is_dir():
        run_stage("train_diffusion", project / "params.yaml", item="mdm")

    def edit(params: dict[str, Any]) -> None:
        params["algo"]["diffusion"]["lr"] = 1e-3
        params["profiles"]["smoke"]["algo"]["diffusion"].update(batch_size=5, captions_per_epoch=8)  # 5 + 3 pairs

    out = "data/models/policy_mdm_modipo"
    runs = one_and_two(project, monkeypatch, "finetune", "mdm_modipo", (out,), edit)
    one, two = runs[1], runs[2]
    assert len(one.history["modipo/loss"]) == len(two.history["modipo/loss"]) >= 2
    assert two.history["modipo/loss"] == pytest.approx(one.history["modipo/loss"], rel=LOSS_RTOL)
    assert two.metrics["score_gap"] == pytest.approx(one.metrics["score_gap"], rel=1e-6)  # the same pairs
    weights = {n: _weights(runs[n].outputs[out]) for n in (1, 2)}
    assert max_diff(weights[1], weights[2]) < WEIGHT_ATOL
    assert max_diff(weights[1], _weights(project / "data" / "models" / "policy_mdm")) > 10 * WEIGHT_ATOL
