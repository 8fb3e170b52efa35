"""Our DPO losses and their gradients against trl's DPOTrainer on one batch of the decoder-only policy.

trl 1.16 has no encoder-decoder DPO (and no PPO), so trl is the reference for our losses here, not our trainer:
the same weights, the same token ids, and trl's own tokenization, collation, log-probabilities and loss.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import Tensor
from trl import DPOConfig, DPOTrainer

from motionpref.models.policy import MotionPolicy
from motionpref.train.losses import log_ratio_margin, preference_loss
from tests.policies import CAPTIONS, tiny_policy

CHOSEN = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12]]
REJECTED = [[3, 3], [0, 1, 2, 3, 4], [15], [12, 14, 9, 9, 2]]
# Per loss, a beta that puts the batch somewhere informative: for the hinge, beta h straddles 1, so two pairs sit
# on the clipped side of the relu and two on the sloped side.
BETAS = {"sigmoid": 0.5, "ipo": 0.5, "hinge": 2.5}
TOL = 1e-5


@pytest.fixture(scope="module")
def policies() -> tuple[MotionPolicy, MotionPolicy]:
    """(policy, reference): a tiny causal policy and a copy whose weights got seeded noise, so that h != 0."""
    reference = tiny_policy("causal", seed=0)
    policy = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in policy.model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return policy, reference


def prompts(policy: MotionPolicy) -> list[str]:
    return [policy.prompt(c) for c in CAPTIONS]


def grads(model: torch.nn.Module) -> dict[str, Tensor]:
    out = {}
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient reached {name}"
        out[name] = param.grad.detach().clone()
    return out


def ours(policy: MotionPolicy, reference: MotionPolicy, loss_type: str, beta: float) -> tuple[Tensor, dict, Tensor]:
    """Our mean loss over the batch, the policy's gradients and the margins h the loss saw."""
    policy = copy.deepcopy(policy)
    policy.model.train()
    # trl's IPO divides each sequence's log-ratio by its completion length (see the trl cross-check below).
    reduction = "mean" if loss_type == "ipo" else "sum"
    with torch.no_grad():
        ref_w = reference.sequence_logprobs(prompts(reference), CHOSEN, reduction)
        ref_l = reference.sequence_logprobs(prompts(reference), REJECTED, reduction)
    policy_w = policy.sequence_logprobs(prompts(policy), CHOSEN, reduction)
    policy_l = policy.sequence_logprobs(prompts(policy), REJECTED, reduction)
    loss = preference_loss(loss_type, policy_w, policy_l, ref_w, ref_l, beta).mean()  # type: ignore[arg-type]
    loss.backward()
    return loss.detach(), grads(policy.model), log_ratio_margin(policy_w, policy_l, ref_w, ref_l).detach()


def trl_trainer(policy: MotionPolicy, reference: MotionPolicy, loss_type: str, beta: float, out: Path) -> DPOTrainer:
    eos = policy.tokenizer.eos_token
    dataset = Dataset.from_dict(
        {
            "prompt": [p + eos for p in prompts(policy)],  # our prompts end in </s>, the prompt/answer separator
            "chosen": [policy.motion_text(c) for c in CHOSEN],  # trl appends </s> to the answers itself
            "rejected": [policy.motion_text(c) for c in REJECTED],
        }
    )
    args = DPOConfig(
        output_dir=str(out),
        loss_type=[loss_type],
        beta=beta,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to=[],
        per_device_train_batch_size=len(CAPTIONS),
        seed=0,
    )
    trainer = DPOTrainer(
        model=copy.deepcopy(policy.model),
        ref_model=copy.deepcopy(reference.model),
        args=args,
        train_dataset=dataset,
        processing_class=copy.deepcopy(policy.tokenizer),
    )
    # trl tokenized the strings itself: it must see exactly the ids our policy scores.
    assert len(trainer.train_dataset) == len(CAPTIONS)
    for i, example in enumerate(trainer.train_dataset):
        assert example["prompt_ids"] == policy.prompt_ids([prompts(policy)[i]])[0]
        assert example["chosen_ids"] == policy.target_ids(CHOSEN[i])
        assert example["rejected_ids"] == policy.target_ids(REJECTED[i])
    return trainer


@pytest.mark.parametrize("loss_type", sorted(BETAS))
def test_loss_and_gradients_match_trl(
    policies: tuple[MotionPolicy, MotionPolicy], loss_type: str, tmp_path: Path
) -> None:
    policy, reference = policies
    beta = BETAS[loss_type]
    our_loss, our_grads, h = ours(policy, reference, loss_type, beta)

    trainer = trl_trainer(policy, reference, loss_type, beta, tmp_path)
    assert not trainer.args.gradient_checkpointing
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 * len(CAPTIONS)  # chosen rows, then rejected rows: one batch
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()
    trl_grads = grads(trainer.model)

    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    assert our_grads.keys() == trl_grads.keys()
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=0, atol=TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert max(g.abs().max().item() for g in our_grads.values()) > 1e-3  # the gradients compared are not all ~0
    if loss_type == "hinge":
        assert (beta * h > 1).any() and (beta * h < 1).any()  # both sides of the relu's kink are exercised


def test_sequence_logprobs_and_rewards_match_trl(policies: tuple[MotionPolicy, MotionPolicy], tmp_path: Path) -> None:
    """trl logs batch means of the summed log-probs and of the implicit rewards; ours must agree."""
    policy, reference = policies
    beta = BETAS["sigmoid"]
    trainer = trl_trainer(policy, reference, "sigmoid", beta, tmp_path)
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, next(iter(trainer.get_train_dataloader())))
        policy_w = policy.sequence_logprobs(prompts(policy), CHOSEN)
        policy_l = policy.sequence_logprobs(prompts(policy), REJECTED)
        ref_w = reference.sequence_logprobs(prompts(reference), CHOSEN)
        ref_l = reference.sequence_logprobs(prompts(reference), REJECTED)
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert metrics["logps/chosen"] == pytest.approx(policy_w.mean().item(), abs=TOL)
    assert metrics["logps/rejected"] == pytest.approx(policy_l.mean().item(), abs=TOL)
    assert metrics["rewards/chosen"] == pytest.approx(beta * (policy_w - ref_w).mean().item(), abs=TOL)
    assert metrics["rewards/margins"] == pytest.approx(
        beta * log_ratio_margin(policy_w, policy_l, ref_w, ref_l).mean().item(), abs=TOL
    )
