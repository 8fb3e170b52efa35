"""What every preference-finetuning method shares: the preference table, LoRA, dropout, the reference model.

One code path for the T5 and the decoder-only policy: log-probabilities always come from
``MotionPolicy.token_scores``, which scores motion tokens only (start, codes, end, ``</s>``), never the prompt.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pandas as pd
import torch
from accelerate import Accelerator
from torch import Tensor, nn

from motionpref import distributed
from motionpref.config import DegreeName, LaunchConfig, LoraConfig, PreferenceFilter
from motionpref.distributed import bare_model
from motionpref.models.policy import MotionPolicy

# weakest first as prefs.labels.DEGREES, so messages and per-degree metrics keep their order (the config's
# literal lists the strongest first)
DEGREES: tuple[DegreeName, ...] = get_args(DegreeName)[::-1]
DEGREE_FILTERS: dict[str, tuple[str, ...]] = {
    "all": ("much_better", "better", "slightly_better"),
    "much_better": ("much_better",),
    "better": ("better",),
    "slightly_better": ("slightly_better",),
    "all_better": ("much_better", "better"),
}
PREFERENCE_COLUMNS = ("pair_id", "prompt", "chosen_tokens", "rejected_tokens", "degree", "margin", "split")


@dataclass(frozen=True)
class PreferencePair:
    """One resolved pair of ``preferences.parquet``; ``caption`` is the table's ``prompt`` (untemplated)."""

    pair_id: str
    caption: str
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    degree: str
    margin: float


def read_preferences(path: str | Path) -> pd.DataFrame:
    """``preferences.parquet`` (the ingest_labels output); a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: preference table not found (run the ingest_labels stage)")
    return pd.read_parquet(path)


def preference_pairs(prefs: pd.DataFrame, split: str, source: str = "preference table") -> list[PreferencePair]:
    """The rows of ``split`` ("train" or "val"); ``source`` names the table in errors (its path, say).

    Raises ValueError on a missing column, an unknown degree, a non-finite margin, an empty motion, or when the
    split holds no row: every consumer needs both splits (the validation split picks the best epoch).
    """
    missing = [c for c in PREFERENCE_COLUMNS if c not in prefs.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected {list(PREFERENCE_COLUMNS)}")
    part = prefs[prefs["split"] == split]
    if part.empty:
        present = sorted(str(s) for s in prefs["split"].unique())
        raise ValueError(
            f"{source}: no preferences in split {split!r} (splits present: {present or 'none'}); "
            "label pairs of more programs, or raise prompts.split.val"
        )
    rows = []
    for rec in part.itertuples(index=False):
        where = f"{source}: pair {rec.pair_id!r}"
        if rec.degree not in DEGREES:
            raise ValueError(f"{where}: degree {rec.degree!r} is not one of {list(DEGREES)}")
        if not math.isfinite(float(rec.margin)):
            raise ValueError(f"{where}: margin {rec.margin!r} is not a finite number")
        chosen, rejected = tuple(int(c) for c in rec.chosen_tokens), tuple(int(c) for c in rec.rejected_tokens)
        if not chosen or not rejected:
            raise ValueError(f"{where}: empty chosen_tokens or rejected_tokens")
        rows.append(PreferencePair(rec.pair_id, rec.prompt, chosen, rejected, rec.degree, float(rec.margin)))
    return rows


def filter_pairs(pairs: Sequence[PreferencePair], config: PreferenceFilter, seed: int) -> list[PreferencePair]:
    """The paper's data ablations: keep the chosen degrees (plus ``negligible`` if asked), then a seeded
    ``fraction`` of what is left (at least one pair)."""
    degrees = set(DEGREE_FILTERS[config.degrees])
    if config.include_negligible and config.degrees in ("all", "all_better"):
        degrees.add("negligible")
    kept = [p for p in pairs if p.degree in degrees]
    if not kept:
        raise ValueError(f"no training preferences left with degrees {sorted(degrees)}")
    if config.fraction < 1.0:
        n = max(1, round(len(kept) * config.fraction))
        kept = random.Random(seed).sample(kept, n)
    return kept


def disable_dropout(model: nn.Module) -> None:
    """Dropout off (the papers finetune without it): the policy and reference then score alike. Call it
    before adding LoRA, whose own dropout is a hyperparameter."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        # T5Attention.dropout and LlamaAttention.attention_dropout are floats handed to the attention kernel.
        for name in ("dropout", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def apply_lora(policy: MotionPolicy, config: LoraConfig) -> None:
    """Wrap ``policy.model`` with peft LoRA adapters in place (nothing when ``config.enabled`` is false)."""
    if not config.enabled:
        return
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if policy.arch == "t5" else TaskType.CAUSAL_LM
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type=task,
    )
    policy.model = get_peft_model(policy.model, peft_config)


def uses_lora(policy: MotionPolicy) -> bool:
    from peft import PeftModel

    return isinstance(policy.model, PeftModel)


def merge_lora(policy: MotionPolicy) -> None:
    """Fold the adapters into the weights so ``policy.save`` writes a plain model any loader reads."""
    if uses_lora(policy):
        policy.model = policy.model.merge_and_unload()


LogMetric = Callable[[str, float, int], None]
# a policy's score on held-out data, higher is better (the finetune stage's: the evaluator's R-precision on the val
# split), computed after each epoch to pick the one kept
ValScore = Callable[[MotionPolicy], float]


@dataclass
class FinetuneJob:
    """What every finetuning algorithm shares; each algorithm module exposes ``run(job, config, data) -> metrics``
    with its own config section and inputs, and places, trains and saves through this object.

    ``beta`` is the algorithm's KL-regularisation strength where its config does not hold it (the DPO family's
    ``algo.beta``, SoPo's ``algo.sopo.beta``); None where the algorithm has none of its own (PPO: ``kl_coef``).
    """

    seed: int
    lora: LoraConfig
    out_dir: Path
    beta: float | None = None
    log_metric: LogMetric | None = None
    accelerator: Accelerator = field(default_factory=lambda: distributed.accelerator(LaunchConfig()))

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def require_beta(self, algorithm: str) -> float:
        if self.beta is None:
            raise ValueError(f"{algorithm} needs a beta; the finetuning job has none")
        return self.beta

    def log(self, name: str, value: float, step: int) -> None:
        if self.log_metric is not None:
            self.log_metric(name, value, step)

    def start(
        self, policy: MotionPolicy, lr: float, weight_decay: float
    ) -> tuple[Reference, list[nn.Parameter], torch.optim.Optimizer]:
        """Dropout off, LoRA on (if enabled), the frozen reference taken, the policy on the job's device, and
        AdamW over what trains: the reference, the trainable parameters and the prepared optimiser."""
        disable_dropout(policy.model)
        apply_lora(policy, self.lora)
        policy.model.to(self.device)
        reference = Reference(policy)
        params = [p for p in policy.model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        policy.model, optimiser = self.accelerator.prepare(policy.model, optimiser)
        return reference, params, optimiser

    def score(self, policy: MotionPolicy, val_score: ValScore) -> float:
        """``val_score`` of the policy as it stands, without dropout or gradients; its training mode is restored.

        The score samples, which a distributed wrapper cannot (it has no ``generate``): it sees the bare model.
        Every launched process scores the whole set (the same seeds, so the same value).
        """
        with bare_model(policy, self.accelerator):
            was_training = policy.model.training
            policy.model.eval()
            try:
                with torch.no_grad():
                    value = float(val_score(policy))
            finally:
                policy.model.train(was_training)
        if not math.isfinite(value):
            raise ValueError(f"the validation score of the policy is {value}, not a finite number")
        return value

    def finish(self, policy: MotionPolicy, state: dict[str, Tensor] | None = None) -> None:
        """Unwrap the policy, load the kept ``state`` (trainable tensors) if given, merge LoRA and save it (the main
        process only, under ``accelerate launch``)."""
        policy.model = self.accelerator.unwrap_model(policy.model)
        if state is not None:
            # strict=False because the snapshot holds only the trainable tensors; a key it holds that the model
            # lacks (a rename) would otherwise load nothing, and a trainable one it lacks would keep the last
            # epoch's value, both silently
            unexpected = policy.model.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"the kept epoch's weights do not fit the policy: unknown keys {unexpected[:5]}")
            missing = sorted(n for n, p in policy.model.named_parameters() if p.requires_grad and n not in state)
            if missing:
                raise ValueError(f"the kept epoch's weights lack trainable tensors of the policy: {missing[:5]}")
        merge_lora(policy)
        policy.model.requires_grad_(True)  # peft froze the base weights; the merged model is a plain one again
        policy.model.eval()
        if self.accelerator.is_main_process:
            policy.save(self.out_dir)


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of the trainable tensors (the adapters under LoRA): what a best-epoch snapshot needs."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in names}


class Reference:
    """The frozen reference pi_ref. Under LoRA it is the policy's own base model with the adapters disabled
    (no second copy in memory); otherwise a frozen deep copy of the policy taken at construction."""

    def __init__(self, policy: MotionPolicy) -> None:
        self.policy = policy
        self.frozen: MotionPolicy | None = None
        if not uses_lora(policy):
            self.frozen = copy.copy(policy)
            self.frozen.model = copy.deepcopy(policy.model).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(
        self, captions: Sequence[str], codes: Sequence[Sequence[int]], reduction: str = "sum", batch_size: int = 128
    ) -> Tensor:
        """log pi_ref(y | x) of each motion ``(B,)`` on CPU, in batches (``reduction`` as
        ``MotionPolicy.sequence_logprobs``)."""
        out = []
        for begin in range(0, len(captions), batch_size):
            prompts = [self.policy.prompt(c) for c in captions[begin : begin + batch_size]]
            chunk = codes[begin : begin + batch_size]
            if self.frozen is not None:
                out.append(self.frozen.sequence_logprobs(prompts, chunk, reduction).cpu())
                continue
            was_training = self.policy.model.training
            self.policy.model.eval()
            with self.policy.model.disable_adapter():
                out.append(self.policy.sequence_logprobs(prompts, chunk, reduction).cpu())
            self.policy.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)


def pair_logprobs(
    policy: MotionPolicy,
    captions: Sequence[str],
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    reduction: str = "sum",
) -> tuple[Tensor, Tensor]:
    """log pi(y_w | x), log pi(y_l | x) ``(B,)`` in one forward pass over the 2B answers (differentiable)."""
    prompts = [policy.prompt(c) for c in captions]
    both = policy.sequence_logprobs([*prompts, *prompts], [*chosen, *rejected], reduction)
    return both[: len(captions)], both[len(captions) :]
