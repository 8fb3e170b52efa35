"""Scalar reward model r(x, y) of a text-to-motion answer, as the MotionGPT preference paper trains it.

The policy's transformer with a fresh one-output head: ``T5ForSequenceClassification`` for the T5 policy (the
whole sequence goes to the encoder and, shifted right, to the decoder; the reward is read at the last ``</s>``)
or ``LlamaForSequenceClassification`` for the decoder-only one (read at the last non-pad token). The input is
the policy's own layout, ``prompt ids </s>`` then ``start codes end </s>``, so the reward model sees exactly
what the policy is scored on. Prompts are full policy prompts (``prompt(caption)`` applies the policy's
default template, the one the preference pairs were sampled with).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformers import (
    AutoModelForSequenceClassification,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5ForSequenceClassification,
)

from motionpref.models.checkpoint import (
    CheckpointError,
    FolderLayout,
    check_state_dict,
    pretrained_writer,
)
from motionpref.models.policy import ARCHS, DEFAULT_TEMPLATE, MotionPolicy, check_motion_offset, load_motion_lm

METADATA_FILE = "motionpref_reward.json"
METADATA_FORMAT = "motionpref.reward/1"
FOLDER = FolderLayout.pretrained(
    "motionpref reward model",
    METADATA_FILE,
    METADATA_FORMAT,
    ("arch", "codebook_size", "motion_offset", "default_template"),
)
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "t5": T5ForSequenceClassification,
    "causal": LlamaForSequenceClassification,
}


class RewardModel:
    """A sequence classifier with one output over the policy's tokens; higher means a better motion."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        codebook_size: int,
        arch: str,
        default_template: str = DEFAULT_TEMPLATE,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"reward arch must be one of {ARCHS}, got {arch!r}")
        if not isinstance(model, MODEL_CLASSES[arch]):
            raise ValueError(f"arch {arch!r} needs a {MODEL_CLASSES[arch].__name__}, got {type(model).__name__}")
        if model.config.num_labels != 1:
            raise ValueError(
                f"a reward model has one output, the model config has num_labels={model.config.num_labels}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.codebook_size = int(codebook_size)
        self.arch = arch
        # MotionPolicy owns the token layout (prompt ids, answer ids, motion vocabulary checks); a view of it over
        # our tokenizer reuses that code instead of restating it. Only its text helpers are ever called.
        self._layout = MotionPolicy(model, tokenizer, codebook_size, arch, (default_template,), default_template)

    @property
    def default_template(self) -> str:
        return self._layout.default_template

    @property
    def motion_offset(self) -> int:
        return self._layout.motion_offset

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_policy(cls, policy: MotionPolicy, seed: int = 0) -> RewardModel:
        """The policy's embeddings and transformer (copied, not shared) under a fresh head drawn with ``seed``.

        Dropout is switched off in the config: the paper trains with none, and the decoder-only model applies
        attention dropout functionally, where trl's ``disable_dropout`` (which zeroes ``nn.Dropout``) cannot reach.
        """
        config = copy.deepcopy(policy.model.config)
        config.num_labels = 1
        config.architectures = [MODEL_CLASSES[policy.arch].__name__]
        if policy.arch == "t5":
            config.dropout_rate = 0.0
            config.classifier_dropout = 0.0
            backbone_state = {k: v for k, v in policy.model.state_dict().items() if not k.startswith("lm_head.")}
        else:
            config.attention_dropout = 0.0
            backbone_state = policy.model.model.state_dict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MODEL_CLASSES[policy.arch](config)
        backbone = model.transformer if policy.arch == "t5" else model.model
        check_state_dict(backbone, backbone_state, where="policy -> reward model backbone")
        backbone.load_state_dict({k: v.detach().clone() for k, v in backbone_state.items()})
        model.to(policy.device)
        model.eval()
        tokenizer = copy.deepcopy(policy.tokenizer)
        return cls(model, tokenizer, policy.codebook_size, policy.arch, policy.default_template)

    def save(self, directory: str | Path) -> None:
        """Model and tokenizer ``save_pretrained`` (safetensors) + ``motionpref_reward.json``, atomically."""
        metadata = {
            "format": METADATA_FORMAT,
            "arch": self.arch,
            "codebook_size": self.codebook_size,
            "motion_offset": self.motion_offset,
            "default_template": self.default_template,
        }
        FOLDER.save(directory, metadata, pretrained_writer(self.model, self.tokenizer))

    @classmethod
    def load(cls, directory: str | Path) -> RewardModel:
        directory = Path(directory)
        # The Auto class reads the architecture from config.json, so a folder whose metadata says otherwise
        # is caught below rather than loaded into the wrong head.
        auto = AutoModelForSequenceClassification
        meta, model, tokenizer = load_motion_lm(directory, FOLDER, {"t5": auto, "causal": auto})
        if not isinstance(model, MODEL_CLASSES[meta["arch"]]):
            raise CheckpointError(
                f"{directory / 'config.json'}: loads as {type(model).__name__}, but {directory / METADATA_FILE} "
                f"says arch {meta['arch']!r} ({MODEL_CLASSES[meta['arch']].__name__})"
            )
        model.eval()
        reward = cls(model, tokenizer, meta["codebook_size"], meta["arch"], meta["default_template"])
        check_motion_offset(directory / METADATA_FILE, meta, reward.motion_offset)
        return reward

    # ---------------------------------------------------------------------------------------------- input
    def prompt(self, caption: str) -> str:
        """The full prompt of ``caption`` in the policy's default template (what the pairs were sampled with)."""
        return self._layout.prompt(caption)

    def input_ids(self, prompts: Sequence[str], codes: Sequence[Sequence[int]]) -> list[list[int]]:
        """``prompt ids </s> start codes end </s>`` per row: the policy's prompt and answer ids, concatenated."""
        if len(prompts) != len(codes):
            raise ValueError(f"{len(prompts)} prompts but {len(codes)} code sequences")
        prompt_rows = self._layout.prompt_ids(prompts)
        return [p + self._layout.target_ids(c) for p, c in zip(prompt_rows, codes, strict=True)]

    # -------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def score_ids(self, input_ids: Sequence[Sequence[int]], batch_size: int = 64) -> Tensor:
        """Rewards ``(B,)`` (float32, on CPU) of ready-made ``input_ids`` rows, in eval mode, without grad."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Batches of similar length waste little on padding; the reward of a row does not depend on its batch.
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        rewards = torch.zeros(len(input_ids))
        was_training = self.model.training
        self.model.eval()
        try:
            for begin in range(0, len(order), batch_size):
                index = order[begin : begin + batch_size]
                # Right padding, as trl's preference collator pads in training.
                batch = self.tokenizer.pad(
                    {"input_ids": [list(input_ids[i]) for i in index]}, padding_side="right", return_tensors="pt"
                )
                out = self.model(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                    use_cache=False,
                )
                rewards[index] = out.logits[:, 0].float().cpu()
        finally:
            self.model.train(was_training)
        return rewards

    def score(self, prompts: Sequence[str], codes: Sequence[Sequence[int]], batch_size: int = 64) -> Tensor:
        """Rewards ``(B,)`` of motion ``codes[i]`` answering full prompt ``prompts[i]`` (see ``prompt``)."""
        return self.score_ids(self.input_ids(prompts, codes), batch_size)
