"""Two processes under ``accelerate launch`` (gloo) train the contrastive models one process trains: the T2M-style
evaluator (its movement autoencoder, then the matching loss with shifted negatives) and the retrieval scorer
(filtered InfoNCE), each process embedding its share of every batch and the whole batch's loss computed from the
embeddings gathered with autograd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from motionpref.config import load_params
from motionpref.models.evaluator import Evaluator
from motionpref.models.retrieval import RetrievalModel
from motionpref.pipeline import artifacts
from tests.distributed_fixtures import (
    WEIGHT_ATOL,
    assert_histories,
    kept,
    max_diff,
    one_and_two,
    set_smoke,
    without_key_bias,
)


def _weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained tensors: the normalisation statistics are set from the data, not trained."""
    return {k: v for k, v in state.items() if k.rpartition(".")[2] not in ("mean", "std", "motion_mean", "motion_std")}


def _initial(project: Path, stage: str, build: Callable[[], torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The weights the stage starts from: the trainer seeds torch with the stage's seed right before building."""
    torch.manual_seed(load_params(project / "params.yaml").stage_seed(stage))
    return _weights(build().state_dict())


@pytest.mark.slow
def test_evaluator_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The movement encoder's dropout (fixed at 0.2, as in the published model) stays on: its masks are drawn for
    the whole batch in every process, so they do not depend on the process count either. The smoke batch of 8 is
    cut to 7 so that the shares differ in size."""

    def edit(params: dict[str, Any]) -> None:
        set_smoke(params, "evaluator.train", batch_size=7)

    out = artifacts.EVALUATOR
    with kept(project, out, artifacts.stage_report("train_evaluator")):
        runs = one_and_two(project, monkeypatch, "train_evaluator", outputs=(out,), edit=edit)
    one, two = (Evaluator.load(runs[n].outputs[out]) for n in (1, 2))
    keys = [f"evaluator/{k}" for k in ("movement_ae_loss", "train_loss", "train_loss_pos", "train_loss_neg")]
    keys += [f"evaluator/val_{k}" for k in ("loss", "loss_pos", "loss_neg", "dist_pos", "dist_neg")]
    assert_histories(runs, keys)
    weights = [_weights(m.state_dict()) for m in (one, two)]
    diff = max_diff(*weights)
    moved = max_diff(weights[0], _initial(project, "train_evaluator", lambda: Evaluator(one.config, one.vocab)))
    assert diff < WEIGHT_ATOL and moved > 10 * WEIGHT_ATOL


@pytest.mark.slow
def test_retrieval_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout off (the transformer's masks are drawn per process); word dropout stays on, its masks drawn for
        the whole batch. The smoke batch of 16 is cut to 15 so that the shares differ in size; two epochs at a higher
    learning rate move the weights well past the bound."""

    def edit(params: dict[str, Any]) -> None:
        set_smoke(params, "retrieval.model", dropout=0.0)
        set_smoke(params, "retrieval.train", batch_size=15, lr=1e-3, epochs=2)

    out = artifacts.RETRIEVAL
    with kept(project, out, artifacts.stage_report("train_retrieval")):
        runs = one_and_two(project, monkeypatch, "train_retrieval", outputs=(out,), edit=edit)
    one, two = (RetrievalModel.load(runs[n].outputs[out]) for n in (1, 2))
    assert_histories(runs, ["retrieval/train_loss", "retrieval/val_loss"])
    assert runs[2].metrics["retrieval/val_recall_at_1"] == runs[1].metrics["retrieval/val_recall_at_1"]
    weights = [without_key_bias(_weights(m.state_dict())) for m in (one, two)]
    diff = max_diff(*weights)

    def fresh() -> torch.nn.Module:
        return RetrievalModel(one.config, one.tokenizer, one.motion_mean.numpy(), one.motion_std.numpy())

    moved = max_diff(weights[0], without_key_bias(_initial(project, "train_retrieval", fresh)))
    assert diff < WEIGHT_ATOL and moved > 10 * WEIGHT_ATOL
