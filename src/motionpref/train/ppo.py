"""RLHF of the motion policy with PPO (Schulman et al. 2017), as the paper ran trl's PPO recipe.

trl 1.x no longer ships PPO, so the loop is written here, step for step as trl's PPOv2 trainer ran it:

1. draw ``batch_size`` captions, sample one motion each through the generator (``sampling``: constrained decoding
   at its temperature, no resampling of invalid ones by default);
2. score the motions with the reward model; scale the score by its running standard deviation times
   ``score_scale`` (trl 0.x ``use_score_scaling``) and clip it to ``score_clip``;
3. per-token rewards: ``-kl_coef * (log pi - log pi_ref)`` on every answer token, plus the score on the last one;
   optionally whitened over the batch without shifting their mean (trl ``whiten_rewards``);
4. GAE advantages from a separate value network (a copy of the reward model, head included, as trl's
   ``value_model``), whitened over the batch; returns = advantages + values;
5. ``ppo_epochs`` passes of shuffled mini-batches minimising the clipped policy loss + ``vf_coef`` * the clipped
   value loss.

No dropout anywhere (policy, LoRA adapters, reference, value network), and NEFTune noise on the policy's input
embeddings is drawn once per rollout sample and replayed in every later forward of that sample (the old
log-probabilities, the reference's, every update): the old log-probabilities are then those of exactly the
function the first update differentiates, so the importance ratio is 1 on the first mini-batch, as PPO assumes.
Fresh noise per forward (transformers' NEFTune hook) or dropout would start every ratio away from 1 and let the
clip range be spent on noise.

Samples without a well-formed motion (no end token within ``max_new_tokens``) are dropped from the batch: they
have no answer to teacher-force in the motion layout; their share is logged as ``ppo/invalid_rate``.

The policy PPO optimises is the one the sampler runs: logits divided by the temperature (as trl) and renormalised
over the tokens the motion grammar allows (``MotionPolicy.sample(constrained=True)``), so the importance ratios,
the KL to the reference and the entropy are those of the sampled distribution. Unconstrained log-probabilities
would let an update push mass onto tokens the sampler never emits and make the sampled KL estimate negative.
That is why log-probabilities are computed here, in the policy's own input layout, rather than with
``MotionPolicy.token_scores``; a test checks they equal ``token_scores`` when neither temperature nor grammar
applies.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PretrainedConfig, PreTrainedModel
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from motionpref.config import LoraConfig, PPOConfig
from motionpref.distributed import (
    average_gradients,
    bare_model,
    reduce_sum,
    sharded_generator,
    share_to_train,
    share_weight,
)
from motionpref.models.generator import MotionGenerator
from motionpref.models.policy import MotionPolicy, _MotionGrammar
from motionpref.progress import track
from motionpref.train.preference import FinetuneJob, Reference, apply_lora, disable_dropout

if TYPE_CHECKING:
    from accelerate import Accelerator

RewardFn = Callable[[list[str], list[list[int]]], Tensor]

WHITEN_EPS = 1e-8  # as trl's masked_whiten


# ------------------------------------------------------------------------------------------------------ math
def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True."""
    return (x * mask).sum() / mask.sum()


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries (unbiased variance, as trl); with
    ``shift_mean=False`` the mean is added back, so only the scale changes. Entries off ``mask`` become 0."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalised_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float
) -> Tensor:
    """Per-token rewards of the KL-regularised objective R(x, y) = r(x, y) - beta log(pi(y|x) / pi_ref(y|x))
    (Ziegler et al. 2019, eq. 2), spread over tokens as trl does: r_t = -beta (log pi(y_t) - log pi_ref(y_t)),
    plus the score r(x, y) on the last answer token. ``scores`` (B,); the others (B, L) with a prefix ``mask``."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = mask.sum(-1) - 1
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16; PPO paper eqs. 11-12):
    delta_t = r_t + gamma V(s_{t+1}) - V(s_t), A_t = sum_l (gamma lam)^l delta_{t+l}, with V = 0 after the last
    token. Returns (advantages, returns = advantages + values), both 0 off the prefix ``mask``; all (B, L)."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss and averaged over tokens:
    -min(rho A, clip(rho, 1 - eps, 1 + eps) A) with rho = pi(a|s) / pi_old(a|s).
    Returns (loss, fraction of tokens where the clipped term was the one taken)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss of OpenAI baselines' ppo2 (as trl): 1/2 max((V - R)^2, (V_clip - R)^2) with
    V_clip = V_old + clip(V - V_old, -eps, eps), averaged over tokens.
    Returns (loss, fraction of tokens where the clipped term was the larger)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)


class RunningMoments:
    """Running mean and unbiased standard deviation of every value seen (Chan et al.'s parallel update, as trl
    0.x's ``RunningMoments`` behind ``use_score_scaling``)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    def update(self, x: Tensor) -> None:
        n = x.numel()
        batch_mean = x.double().mean().item()
        batch_m2 = ((x.double() - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 0.0


def scale_scores(scores: Tensor, std: float, scale: float, clip: float | None) -> Tensor:
    """trl 0.x score scaling: ``scale * score / std`` (``std`` the running standard deviation of the scores),
    then clipped to [-clip, clip]. A zero std (all scores so far identical) carries no scale and leaves the
    scores unscaled."""
    scores = scale * scores / (std if std > 0 else 1.0)
    return scores.clamp(-clip, clip) if clip is not None else scores


# -------------------------------------------------------------------------------------------- model layout
@dataclass
class AnswerLayout:
    """Inputs that put (prompt, answer) pairs in a model's training layout, and where each answer token's
    prediction comes out.

    Encoder-decoder: the encoder reads the prompt, the decoder ``decoder_start, a_0 .. a_{L-2}``; decoder position t
    predicts a_t. Decoder-only: ``prompt + answer`` right-padded; position ``len(prompt) - 1 + t`` predicts a_t.
    Either way the output for a_t has seen the prompt and a_<t only."""

    inputs: dict[str, Tensor]
    targets: Tensor  # (B, L) answer token ids (start, codes, end, </s>), 0 off mask
    mask: Tensor  # (B, L) bool, True on answer tokens
    positions: Tensor | None  # (B, L) output row predicting each answer token (decoder-only), else None

    def select(self, outputs: Tensor) -> Tensor:
        """(B, S, ...) model outputs -> (B, L, ...) at the answer tokens."""
        if self.positions is None:
            return outputs
        index = self.positions.view(*self.positions.shape, *[1] * (outputs.dim() - 2))
        return outputs.gather(1, index.expand(-1, -1, *outputs.shape[2:]))


def _rows(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    return pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)


def answer_layout(
    policy: MotionPolicy, prompts: Sequence[str], codes: Sequence[Sequence[int]], config: PretrainedConfig
) -> AnswerLayout:
    """The layout of ``config``'s architecture for the policy's prompt and answer tokens."""
    targets = [policy.target_ids(c) for c in codes]
    pad = policy.tokenizer.pad_token_id
    mask = _rows([[1] * len(t) for t in targets], 0).bool()
    device = policy.device
    if config.is_encoder_decoder:
        # T5 starts the decoder from pad when the config names no other start token.
        start = getattr(config, "decoder_start_token_id", None)
        start = config.pad_token_id if start is None else start
        inputs = policy.encode_prompts(prompts)
        inputs["decoder_input_ids"] = _rows([[start, *t[:-1]] for t in targets], pad).to(device)
        positions = None
    else:
        prompt_rows = policy.prompt_ids(prompts)
        sequences = [p + t for p, t in zip(prompt_rows, targets, strict=True)]
        inputs = {
            "input_ids": _rows(sequences, pad).to(device),
            "attention_mask": _rows([[1] * len(s) for s in sequences], 0).to(device),
        }
        width = mask.shape[1]
        positions = torch.stack([len(p) - 1 + torch.arange(width) for p in prompt_rows])
        positions = positions.clamp(max=inputs["input_ids"].shape[1] - 1).to(device)
    return AnswerLayout(inputs, _rows(targets, 0).to(device), mask.to(device), positions)


def motion_grammar(policy: MotionPolicy) -> _MotionGrammar:
    """The grammar ``MotionPolicy.sample`` decodes with (``constrained=True``): start, codes, end, ``</s>``."""
    codes = range(policy.motion_offset, policy.motion_offset + policy.codebook_size)
    return _MotionGrammar(policy.start_id, policy.end_id, policy.tokenizer.eos_token_id, codes)


def token_stats(
    model: nn.Module, layout: AnswerLayout, temperature: float, grammar: _MotionGrammar | None
) -> tuple[Tensor, Tensor]:
    """Per answer token: log pi(a_t | s_t) and the entropy of pi(. | s_t); both (B, L), 0 off the mask.

    pi is the distribution sampled from: the logits divided by ``temperature`` (as trl) and, with ``grammar``,
    renormalised over the tokens the motion grammar allows after a_<t. PPO then optimises the policy the sampler
    runs, and a forced token (start, ``</s>``) has log-probability 0."""
    logits = layout.select(model(**layout.inputs).logits).float() / temperature
    if grammar is not None:
        # Column t sees the prefix a_<t behind a text token (0: never a motion token) standing for the prompt.
        prefixes = F.pad(layout.targets, (1, 0), value=0)
        columns = [grammar(prefixes[:, : t + 1], logits[:, t]) for t in range(logits.shape[1])]
        # A finite floor instead of -inf keeps 0 * log 0 in the entropy at 0 rather than NaN.
        logits = torch.stack(columns, 1).clamp(min=torch.finfo(logits.dtype).min)
    logprobs = selective_log_softmax(logits, layout.targets)
    return logprobs * layout.mask, entropy_from_logits(logits) * layout.mask


def _score_head(model: PreTrainedModel) -> nn.Module:
    """The scalar head of a ``*ForSequenceClassification`` (T5: ``classification_head``; Llama: ``score``)."""
    for name in ("classification_head", "score"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(
        f"value_init ({type(model).__name__}) has no classification_head or score module; the value network "
        "starts from a T5ForSequenceClassification or LlamaForSequenceClassification reward model"
    )


class ValueModel(nn.Module):
    """V(s_t) for every answer token: a copy of the reward model (transformer and head, as trl's value model is
    loaded from the reward model) run in the reward model's input layout, read where that state ends.

    The reward model scores the row ``prompt ids </s> start codes end </s>`` (its collator's right padding) and
    reads its head at the final ``</s>``. Decoder-only, the value network reads the same row, causally, at the last
    token of each state ``prompt + a_<t``; at its initialisation the value of a state is the reward model's score
    of that prefix. T5 (encoder-decoder), the decoder reads the reward model's decoder input token for token (the
    row shifted right) and the value of s_t is read at the decoder position that has seen ``prompt + a_<t``; the
    last state is read at the reward model's own read position. The encoder reads the prompt row only (the reward
    model's encoder input for an empty answer): T5's encoder is bidirectional, so given the whole row it would show
    every V(s_t) the tokens after t, and re-encoding each prefix as its own row costs a forward per answer token
    (measured: 17x the value network's time on the workspace models, more than the rest of PPO together)."""

    def __init__(self, reward_model: PreTrainedModel) -> None:
        super().__init__()
        _score_head(reward_model)
        if reward_model.config.num_labels != 1:
            raise ValueError(
                f"value_init has num_labels={reward_model.config.num_labels}; the value network starts from a "
                "reward model, which has one output"
            )
        self.model = copy.deepcopy(reward_model)
        self.config = self.model.config
        self.pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0

    def body_inputs(self, prompt_rows: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """What the transformer body reads for these prompt and answer ids (right-padded)."""
        device = next(self.model.parameters()).device
        full = [[*p, *a] for p, a in zip(prompt_rows, targets, strict=True)]
        inputs = {"input_ids": _rows(full, self.pad_id), "attention_mask": _rows([[1] * len(r) for r in full], 0)}
        if self.config.is_encoder_decoder:
            # T5ForSequenceClassification's own decoder input: the row shifted right behind the start token (T5
            # starts from pad when the config names no other, as in answer_layout).
            start = getattr(self.config, "decoder_start_token_id", None)
            inputs["decoder_input_ids"] = _rows(
                [[self.pad_id if start is None else start, *r[:-1]] for r in full], self.pad_id
            )
            inputs["input_ids"] = _rows(prompt_rows, self.pad_id)
            inputs["attention_mask"] = _rows([[1] * len(p) for p in prompt_rows], 0)
        return {k: v.to(device) for k, v in inputs.items()}

    def forward(self, prompt_rows: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> Tensor:
        """Values ``(B, L)`` of the states before each answer token (``targets`` the answer ids, ``prompt_rows``
        the prompt ids), 0 past each answer."""
        inputs = self.body_inputs(prompt_rows, targets)
        hidden = self.model.base_model(**inputs, use_cache=False)[0]
        width = max(len(t) for t in targets)
        # State s_t = prompt + a_<t ends at full-row column len(prompt) - 1 + t; a T5 decoder position sees the
        # row up to the column before it, so it reads one column later.
        shift = 0 if self.config.is_encoder_decoder else 1
        positions = torch.stack([len(p) - shift + torch.arange(width) for p in prompt_rows]).to(hidden.device)
        positions = positions.clamp(max=hidden.shape[1] - 1)
        hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        mask = _rows([[1] * len(t) for t in targets], 0).bool().to(hidden.device)
        return _score_head(self.model)(hidden).squeeze(-1) * mask


class NEFTune:
    """NEFTune (Jain et al. 2023): uniform noise of scale alpha / sqrt(S d) on a model's input embeddings (S the
    padded width, d the embedding size, as transformers' hook), drawn once per rollout sample and embedding module
    and replayed in every later forward of that sample, so that all forwards of a sample (old log-probabilities,
    reference, updates) see the same inputs. ``alpha=None`` adds nothing.

    Noise is added only inside ``rows(samples)``, which names the rollout sample behind each batch row; generation
    runs outside it, noise-free. ``new_rollout`` forgets the noise of the previous batch."""

    def __init__(self, alpha: float | None, generator: torch.Generator) -> None:
        self.alpha, self.generator = alpha, generator
        self._noise: dict[tuple[int, int], Tensor] = {}  # (embedding module index, sample) -> (S, d)
        self._samples: list[int] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, model: nn.Module) -> None:
        """Hook every embedding sharing the input embedding weight (T5's encoder and decoder own modules tied to
        it; transformers' ``activate_neftune`` hooks ``get_input_embeddings()`` alone, which T5 never calls).
        Models attached alike (the policy and its frozen copy) number their modules alike and share the noise."""
        if self.alpha is None:
            return
        weight = model.get_input_embeddings().weight
        modules = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is weight]
        for index, module in enumerate(modules):
            self._handles.append(module.register_forward_hook(partial(self._hook, index)))

    def detach(self) -> None:
        """Remove the hooks from every attached model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def new_rollout(self) -> None:
        self._noise.clear()

    @contextmanager
    def rows(self, samples: Sequence[int]) -> Iterator[None]:
        self._samples = list(samples)
        try:
            yield
        finally:
            self._samples = None

    def _hook(self, index: int, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        if self._samples is None:
            return output
        batch, width, dim = output.shape
        if len(self._samples) != batch:
            raise RuntimeError(f"NEFTune: {batch} embedding rows but {len(self._samples)} samples named")
        keys = [(index, sample) for sample in self._samples]
        known = [key in self._noise for key in keys]
        if not any(known):
            scale = self.alpha / (width * dim) ** 0.5
            drawn = (torch.rand(batch, width, dim, generator=self.generator) * 2 - 1) * scale
            self._noise.update(zip(keys, drawn.to(output.dtype), strict=True))
        elif not all(known) or any(self._noise[key].shape[0] < width for key in keys):
            # A replayed batch is a subset of the rollout batch, never wider; anything else is a wiring error.
            raise RuntimeError("NEFTune: a forward mixes new samples with rollout samples or is wider than its rollout")
        noise = torch.stack([self._noise[key][:width] for key in keys]).to(output.device)
        return output + noise


# ------------------------------------------------------------------------------------------------- training
@dataclass
class _Rollout:
    """One batch of sampled motions with what the PPO updates need, all (B, L) over the answer tokens."""

    prompts: list[str]
    codes: list[list[int]]
    logprobs: Tensor  # under the policy that sampled them, in the updates' forward (its NEFTune noise included)
    values: Tensor
    advantages: Tensor
    returns: Tensor

    def rows(self, index: Tensor, width: int) -> tuple[Tensor, ...]:
        return tuple(t[index, :width] for t in (self.logprobs, self.values, self.advantages, self.returns))


def _caption_batches(captions: Sequence[str], size: int, rng: random.Random) -> Iterator[list[str]]:
    """Endless batches of ``size`` captions: shuffled passes over ``captions``, a batch may span two passes."""
    order: list[str] = []
    while True:
        while len(order) < size:
            epoch = list(captions)
            rng.shuffle(epoch)
            order.extend(epoch)
        yield order[:size]
        order = order[size:]


def _check_value_init(policy: MotionPolicy, value_init: PreTrainedModel) -> None:
    rows = value_init.get_input_embeddings().num_embeddings
    if rows < len(policy.tokenizer):
        raise ValueError(
            f"value_init ({type(value_init).__name__}) has {rows} embedding rows but the policy's tokenizer has "
            f"{len(policy.tokenizer)} tokens; the value network must read the policy's token ids"
        )


@dataclass
class PPOData:
    """The sampler of the policy to finetune (``generator.policy``; its sampling must be ``config.sampling``), the
    reward ``reward_fn(prompts, codes) -> (B,)``, the model the value network starts from, and the prompts."""

    generator: MotionGenerator
    reward_fn: RewardFn
    value_init: PreTrainedModel
    captions: Sequence[str]


def run(job: FinetuneJob, config: PPOConfig, data: PPOData) -> dict[str, float]:
    """Finetune ``data.generator.policy`` in place with PPO against ``data.reward_fn`` and save it (adapters
    merged) to ``job.out_dir``.

    With ``config.lora`` PPO trains ``job.lora``'s adapters (when enabled; their dropout set to 0), otherwise the
    whole policy. The value network is a copy of ``value_init`` (``value_init`` is untouched). The reference is
    the initial policy (a frozen copy, or with LoRA the base model with the adapters disabled).

    Under ``accelerate launch`` each process samples its share of every rollout's captions (each from its own
    seed) and every process holds them all; the rollout (scores, log-probabilities, values, NEFTune noise, the
    running score moments, GAE and the whitenings) is computed whole in every process, so its statistics are the
    global batch's and the mini-batch order is the same everywhere. Each process then updates on its share of
    every mini-batch, policy and value network being replicas whose gradients are averaged. Only the main process
    saves.

    Logs per step ``ppo/score_mean``, ``ppo/rlhf_reward`` (score - kl_coef * KL), ``ppo/kl`` (sequence KL to the
    reference), ``ppo/entropy`` (per token), ``ppo/policy_loss``, ``ppo/value_loss``, ``ppo/clip_frac``,
    ``ppo/value_clip_frac``, ``ppo/approx_kl``, ``ppo/invalid_rate`` and ``ppo/length_mean`` (codes per valid
    motion); a step whose samples are all invalid logs ``ppo/invalid_rate`` only and makes no update.
    Returns each metric's last value (without the ``ppo/`` prefix), ``score_mean_first`` and ``prompts``.
    """
    if not data.captions:
        raise ValueError("ppo: no captions to prompt the policy with")
    if data.generator.sampling != config.sampling:
        raise ValueError("ppo: the generator must sample with algo.ppo.sampling (its log-probabilities assume it)")
    policy = data.generator.policy
    _check_value_init(policy, data.value_init)
    policy.model.to(job.device)
    torch.manual_seed(job.seed)  # peft draws LoRA's initial adapter weights from the global generator
    rng = random.Random(job.seed)
    batches = _caption_batches(data.captions, config.batch_size, rng)
    lora = job.lora.model_copy(update={"dropout": 0.0}) if config.lora else LoraConfig(enabled=False)
    ppo = _PPO(data.generator, data.reward_fn, data.value_init, config, lora, job.seed, job.accelerator)
    history: dict[str, float] = {}
    try:
        for step in track(range(1, config.steps + 1), description="ppo", total=config.steps):
            seeds = [rng.randrange(2**31) for _ in range(config.batch_size)]
            metrics = ppo.step(next(batches), seeds)
            if "score_mean" in metrics:
                history.setdefault("score_mean_first", metrics["score_mean"])
            history.update(metrics)
            for name, value in metrics.items():
                job.log(f"ppo/{name}", value, step)
    finally:
        ppo.noise.detach()
    job.finish(policy)
    return {**history, "prompts": len(data.captions)}


class _PPO:
    """The models and optimiser state of one PPO run."""

    def __init__(
        self,
        generator: MotionGenerator,
        reward_fn: RewardFn,
        value_init: PreTrainedModel,
        config: PPOConfig,
        lora: LoraConfig,
        seed: int,
        accel: Accelerator,
    ) -> None:
        self.sampler, self.reward_fn, self.config, self.accel = generator, reward_fn, config, accel
        policy = self.policy = generator.policy
        self.generator = torch.Generator().manual_seed(seed)  # NEFTune noise, mini-batch order
        self.value_model = ValueModel(value_init).to(policy.device)
        disable_dropout(self.value_model)
        disable_dropout(policy.model)
        apply_lora(policy, lora)
        self.reference = Reference(policy)
        self.noise = NEFTune(config.neftune_alpha, self.generator)
        self.noise.attach(policy.model)
        if self.reference.frozen is not None:
            self.noise.attach(self.reference.frozen.model)
        self.grammar = motion_grammar(policy)
        self.moments = RunningMoments()
        self.params = [p for p in (*policy.model.parameters(), *self.value_model.parameters()) if p.requires_grad]
        self.optimiser = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)

    def step(self, captions: list[str], seeds: list[int]) -> dict[str, float]:
        """Sample one motion per caption, then PPO updates on the valid ones; the step's metrics."""
        config = self.config
        with bare_model(self.sampler.policy, self.accel):  # a DDP wrapper has no generate
            samples = sharded_generator(self.sampler, self.accel).generate(captions, seeds, decode=False)
        metrics = {"invalid_rate": samples.n_invalid / len(captions)}
        keep = [i for i, ok in enumerate(samples.valid) if ok]
        if not keep:
            return metrics
        codes = [samples.codes[i] for i in keep]
        rollout, rollout_metrics = self.rollout([self.policy.prompt(captions[i]) for i in keep], codes)
        metrics.update(rollout_metrics)
        metrics["length_mean"] = sum(len(c) for c in codes) / len(codes)
        updates = [
            self.update(rollout, index)
            for _ in range(config.ppo_epochs)
            for index in torch.randperm(len(keep), generator=self.generator).split(config.mini_batch_size)
        ]
        metrics.update({name: sum(u[name] for u in updates) / len(updates) for name in updates[0]})
        return metrics

    @torch.no_grad()
    def rollout(self, prompts: list[str], codes: list[list[int]]) -> tuple[_Rollout, dict[str, float]]:
        """Scores, log-probabilities (current policy and reference), values, rewards and advantages of a batch.

        The forwards are those of the updates: the same models in the same mode, dropout off, and this batch's
        NEFTune noise (drawn here, replayed in the updates and for the reference), so the first update starts
        at ratio 1 and the first rollout's KL to the reference is 0."""
        policy, config = self.policy, self.config
        layout = answer_layout(policy, prompts, codes, policy.model.config)
        mask = layout.mask
        self.noise.new_rollout()
        with self.noise.rows(range(len(prompts))):
            logprobs, entropy = token_stats(policy.model, layout, config.sampling.temperature, self.grammar)
            if self.reference.frozen is not None:
                ref_logprobs, _ = token_stats(
                    self.reference.frozen.model, layout, config.sampling.temperature, self.grammar
                )
            else:
                with policy.model.disable_adapter():
                    ref_logprobs, _ = token_stats(policy.model, layout, config.sampling.temperature, self.grammar)
        values = self.value_model(policy.prompt_ids(prompts), [policy.target_ids(c) for c in codes])

        scores = self.reward_fn(prompts, codes)
        if not isinstance(scores, Tensor) or scores.shape != (len(prompts),) or not torch.isfinite(scores).all():
            raise ValueError(
                f"reward_fn must return {len(prompts)} finite scores as a tensor of shape ({len(prompts)},)"
            )
        scores = scores.detach().float().to(mask.device)
        self.moments.update(scores)
        scaled = scale_scores(scores, self.moments.std, config.score_scale, config.score_clip)

        rewards = kl_penalised_rewards(scaled, logprobs, ref_logprobs, mask, config.kl_coef)
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
        advantages = masked_whiten(advantages, mask)

        kl = ((logprobs - ref_logprobs) * mask).sum(-1)
        metrics = {
            "score_mean": scores.mean().item(),
            "kl": kl.mean().item(),
            "rlhf_reward": (scores - config.kl_coef * kl).mean().item(),
            "entropy": masked_mean(entropy, mask).item(),
        }
        return _Rollout(prompts, codes, logprobs, values, advantages, returns), metrics

    def update(self, rollout: _Rollout, index: Tensor) -> dict[str, float]:
        """One optimiser step on the mini-batch ``index`` of ``rollout``: clipped policy + vf_coef * value loss.

        Under ``accelerate launch`` each process takes its share of the mini-batch's rows; the losses, token means,
        are weighted by the share's answer tokens (``share_weight``) and the replicas' gradients averaged
        (``average_gradients``), so every process takes the mini-batch's step; the metrics are its token means."""
        policy, config, accel = self.policy, self.config, self.accel
        rows, counted, _ = share_to_train(index.tolist(), accel)
        prompts = [rollout.prompts[i] for i in rows]
        codes = [rollout.codes[i] for i in rows]
        layout = answer_layout(policy, prompts, codes, policy.model.config)
        mask = layout.mask
        old_logprobs, old_values, advantages, returns = rollout.rows(torch.tensor(rows), mask.shape[1])
        with self.noise.rows(rows):
            logprobs, _ = token_stats(policy.model, layout, config.sampling.temperature, self.grammar)
        values = self.value_model(policy.prompt_ids(prompts), [policy.target_ids(c) for c in codes])
        pg_loss, clip_frac = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, config.clip_range)
        vf_loss, vf_clip_frac = clipped_value_loss(values, old_values, returns, mask, config.clip_range_value)
        tokens = int(mask.sum().item()) if counted else 0
        weight = share_weight(tokens, reduce_sum(tokens, accel), accel)
        self.optimiser.zero_grad(set_to_none=True)
        ((pg_loss + config.vf_coef * vf_loss) * weight).backward()
        average_gradients(self.params, accel)
        torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
        self.optimiser.step()
        approx_kl = 0.5 * masked_mean((logprobs.detach() - old_logprobs) ** 2, mask)
        stats = {
            "policy_loss": pg_loss,
            "value_loss": vf_loss,
            "clip_frac": clip_frac,
            "value_clip_frac": vf_clip_frac,
            "approx_kl": approx_kl,
        }
        # each share's token mean, weighted: their mean over the processes is the mini-batch's token mean
        return {name: reduce_sum(value.item() * weight, accel) / accel.num_processes for name, value in stats.items()}
