"""Text-to-motion language-model policy in the style of MotionGPT (Jiang et al., NeurIPS 2023).

A T5 encoder-decoder (or, for cross-checks against trl, a decoder-only Llama) whose vocabulary is extended
with the VQ-VAE codes as text tokens ``<motion_id_0>``..``<motion_id_{K-1}>`` plus ``<motion_id_K>`` (start),
``<motion_id_{K+1}>`` (end) and ``<motion_id_{K+2}>`` (mask). A motion is written as MotionGPT writes it:
``<motion_id_K><motion_id_c1>...<motion_id_cN><motion_id_{K+1}>``, followed by the tokenizer's ``</s>``.
The prompt is an instruction template with the caption in place of ``<Caption_Placeholder>``; like T5's
tokenizer we end every prompt with ``</s>``, which for the decoder-only arch doubles as the prompt/answer
separator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from motionpref.config import PolicyConfig
from motionpref.models.checkpoint import (
    CheckpointError,
    FolderLayout,
    check_state_dict,
    load_pretrained,
    pretrained_writer,
)
from motionpref.models.tokenizer import add_motion_tokens, build_word_tokenizer, motion_token

ARCHS = ("t5", "causal")
CAPTION_PLACEHOLDER = "<Caption_Placeholder>"
# MotionGPT's evaluation prompt (mgpt_lm.generate_conditional, task "t2m").
DEFAULT_TEMPLATE = f"Generate motion: {CAPTION_PLACEHOLDER}"
# The default, the bare caption of MotionGPT's pretraining stage, and paraphrases taken from MotionGPT's
# instruction set (prepare/instructions/template_instructions.json, Text-to-Motion / caption).
T2M_TEMPLATES: tuple[str, ...] = (
    DEFAULT_TEMPLATE,
    CAPTION_PLACEHOLDER,
    f"Please create a motion for the caption: {CAPTION_PLACEHOLDER}",
    f"Give me a motion that expresses {CAPTION_PLACEHOLDER}",
    f"Show me a motion that conveys the meaning of {CAPTION_PLACEHOLDER}",
    f"Generate a motion that embodies the idea of {CAPTION_PLACEHOLDER}",
    f"Create a sequence of movements based on {CAPTION_PLACEHOLDER}",
    f"Demonstrate a motion that illustrates {CAPTION_PLACEHOLDER}",
    f"Develop a motion sequence that expresses {CAPTION_PLACEHOLDER}",
    f"Please create a motion that depicts {CAPTION_PLACEHOLDER}",
    f"Give me a gesture that depicts {CAPTION_PLACEHOLDER}",
    f"I would like to see the motion of {CAPTION_PLACEHOLDER}",
    f"Produce a motion that exemplifies {CAPTION_PLACEHOLDER}",
    f"Show me a sequence of movements that evokes {CAPTION_PLACEHOLDER}",
    f"{CAPTION_PLACEHOLDER} is the description of a man's movements, generate it for me.",
    f"Can you generate a motion that portrays {CAPTION_PLACEHOLDER} in a realistic way?",
)
METADATA_FILE = "motionpref_policy.json"
METADATA_FORMAT = "motionpref.policy/1"
# default_template is optional: folders from before it existed used DEFAULT_TEMPLATE.
FOLDER = FolderLayout.pretrained(
    "motionpref policy", METADATA_FILE, METADATA_FORMAT, ("arch", "codebook_size", "motion_offset", "templates")
)
MOTIONGPT_LM_PREFIX = "lm.language_model."
MOTIONGPT_VAE_PREFIX = "vae."
# MotionGPT decodes t2m with max_length=128 (decoder start included).
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class TargetScores:
    """Per-token scores of the motion targets (``logprobs`` 0 and ``correct`` False off ``mask``)."""

    logprobs: Tensor  # (B, L) log p(target token | prompt, previous targets)
    mask: Tensor  # (B, L) bool, True on target tokens
    correct: Tensor  # (B, L) bool, argmax prediction == target


@dataclass
class SampleBatch:
    """Sampled motions. ``token_ids`` are the generated ids (decoder start / prompt and the final ``</s>``
    removed); ``codes`` is empty where ``valid`` is False (no well-formed motion in the output)."""

    token_ids: list[list[int]]
    codes: list[list[int]]
    valid: list[bool]

    @property
    def n_invalid(self) -> int:
        return sum(not ok for ok in self.valid)

    def decode(self, vqvae: nn.Module) -> list[Tensor | None]:
        """Normalised features ``(4N, D)`` of each valid sample via ``vqvae.decode((B, N)) -> (B, 4N, D)``;
        ``None`` for an invalid one. Samples of equal length are decoded together."""
        device = next(vqvae.parameters()).device
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, (codes, ok) in enumerate(zip(self.codes, self.valid, strict=True)):
            if ok:
                by_length[len(codes)].append(i)
        features: list[Tensor | None] = [None] * len(self.codes)
        with torch.no_grad():
            for indices in by_length.values():
                batch = torch.tensor([self.codes[i] for i in indices], dtype=torch.long, device=device)
                for i, feats in zip(indices, vqvae.decode(batch).cpu(), strict=True):
                    features[i] = feats
        return features


class _RowSeededGumbel(LogitsProcessor):
    """Adds Gumbel(0, 1) noise drawn from one generator per batch row.

    Gumbel-max trick: argmax(scores + g) with g ~ Gumbel(0, 1) i.i.d. is an exact sample of
    softmax(scores), so greedy decoding after this processor samples from the (warped) distribution. Each row
    consumes exactly one vocabulary-sized draw from its own generator per step, so row i's sample depends only
    on seed i, never on which other prompts share the batch, while decoding stays batched with the KV cache
    of ``generate``.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniform = torch.stack(
            [
                torch.rand(scores.shape[-1], generator=g, device=scores.device, dtype=torch.float32)
                for g in self.generators
            ]
        )
        tiny = torch.finfo(torch.float32).tiny
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny)))
        return scores + gumbel.to(scores.dtype)


class _MotionGrammar(LogitsProcessor):
    """Constrained decoding: the start token first, then one or more motion codes, the end token, ``</s>``.

    A tiny model sampled at temperature 1.2 would otherwise drop a word token into a third of its motions,
    which MotionGPT's parser does not survive either; masking keeps the model's distribution over the tokens a
    motion can hold, renormalised. Generations that never reach the end token are still invalid.
    """

    def __init__(self, start: int, end: int, eos: int, codes: range) -> None:
        self.start, self.end, self.eos, self.codes = start, end, eos, codes

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        started = (input_ids == self.start).any(-1)
        ended = (input_ids == self.end).any(-1)
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        allowed[~started, self.start] = True
        inside = started & ~ended
        allowed[inside, self.codes.start : self.codes.stop] = True
        allowed[inside & (input_ids[:, -1] != self.start), self.end] = True  # at least one code
        allowed[ended, self.eos] = True
        return scores.masked_fill(~allowed, float("-inf"))


def _pad(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> Tensor:
    # Hand-rolled: labels pad with -100 and the decoder-only model pads prompts on the left, which
    # tokenizer.pad does not cover for id lists we build ourselves (answers are never re-tokenized).
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if side == "right":
                out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            else:
                out[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
    return out


class MotionPolicy:
    """A language model over text + motion tokens with the API the preference-learning code needs."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        codebook_size: int,
        arch: str,
        templates: Sequence[str] = T2M_TEMPLATES,
        default_template: str = DEFAULT_TEMPLATE,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"policy arch must be one of {ARCHS}, got {arch!r}")
        templates = tuple(templates)
        for template in (*templates, default_template):
            if CAPTION_PLACEHOLDER not in template:
                raise ValueError(f"template {template!r} lacks the {CAPTION_PLACEHOLDER} placeholder")
        if not templates:
            raise ValueError("at least one instruction template is needed")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the policy tokenizer needs both an eos and a pad token")
        self.model = model
        # kept apart from the model, which a DDP wrapper (accelerate) may hide: the T5 decoder's first input
        self.decoder_start_id = getattr(model.config, "decoder_start_token_id", None)
        self.tokenizer = tokenizer
        self.codebook_size = int(codebook_size)
        self.arch = arch
        self.templates = templates
        self.default_template = default_template
        self.motion_offset = add_motion_tokens(tokenizer, self.codebook_size)
        rows = model.get_input_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise ValueError(f"model has {rows} embedding rows but the tokenizer has {len(tokenizer)} tokens")

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_scratch(
        cls,
        config: PolicyConfig,
        captions: Iterable[str],
        seed: int = 0,
        templates: Sequence[str] = T2M_TEMPLATES,
        default_template: str = DEFAULT_TEMPLATE,
    ) -> MotionPolicy:
        """A randomly initialised tiny model with a word-level vocabulary of ``captions`` + template words."""
        template_words = [t.replace(CAPTION_PLACEHOLDER, " ") for t in (*templates, default_template)]
        tokenizer = build_word_tokenizer([*captions, *template_words], min_frequency=config.min_word_frequency)
        add_motion_tokens(tokenizer, config.codebook_size)
        ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        if config.arch == "t5":
            model_config: Any = T5Config(
                vocab_size=len(tokenizer),
                d_model=config.d_model,
                d_kv=config.d_model // config.num_heads,
                d_ff=config.d_ff,
                num_layers=config.num_layers,
                num_decoder_layers=config.num_layers,
                num_heads=config.num_heads,
                dropout_rate=config.dropout,
                feed_forward_proj="gated-gelu",  # as flan-t5
                # Tied (T5 v1.0 style): the output is then scaled by d_model**-0.5, so a fresh model starts
                # near uniform instead of flan-t5's untied head, whose random init gives logits of size ~10.
                tie_word_embeddings=True,
                decoder_start_token_id=tokenizer.pad_token_id,
                **ids,
            )
            model_cls: Any = T5ForConditionalGeneration
        else:
            model_config = LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=config.d_model,
                intermediate_size=config.d_ff,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                num_key_value_heads=config.num_heads,
                max_position_embeddings=config.max_positions,
                attention_dropout=config.dropout,
                tie_word_embeddings=True,
                bos_token_id=tokenizer.eos_token_id,
                **ids,
            )
            model_cls = LlamaForCausalLM
        # fork_rng: seed the initialisation without disturbing the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls(model_config)
        return cls(model, tokenizer, config.codebook_size, config.arch, templates, default_template)

    @classmethod
    def from_motiongpt(
        cls,
        checkpoint: str | Path,
        t5_dir: str | Path,
        codebook_size: int = 512,
        templates: Sequence[str] = T2M_TEMPLATES,
        default_template: str = DEFAULT_TEMPLATE,
    ) -> tuple[MotionPolicy, dict[str, Tensor]]:
        """Load a MotionGPT checkpoint (``{"state_dict": {"lm.language_model.*", "vae.*", ...}}``) on top of a
        local flan-t5 directory (config + tokenizer). Returns the policy and the ``vae.*`` weights with the
        prefix stripped, for ``MotionVQVAE``.

        As MotionGPT's ``MLM.__init__``: motion tokens appended with ``add_tokens``, then the embeddings
        resized to ``len(tokenizer)``, so the checkpoint's embedding rows line up with the token ids.
        """
        checkpoint, t5_dir = Path(checkpoint), Path(t5_dir)
        if not t5_dir.is_dir():
            raise FileNotFoundError(f"{t5_dir}: flan-t5 directory (config.json + tokenizer files) not found")
        config = AutoConfig.from_pretrained(t5_dir)
        if config.model_type != "t5":
            raise CheckpointError(f"{t5_dir / 'config.json'}: model_type must be 't5', got {config.model_type!r}")
        tokenizer = AutoTokenizer.from_pretrained(t5_dir)
        add_motion_tokens(tokenizer, codebook_size)
        state = load_motiongpt_state(checkpoint)
        lm_state = _strip_prefix(state, MOTIONGPT_LM_PREFIX)
        vae_state = _strip_prefix(state, MOTIONGPT_VAE_PREFIX)
        if not lm_state:
            raise CheckpointError(f"{checkpoint}: state_dict has no '{MOTIONGPT_LM_PREFIX}*' keys (T5 weights)")
        if not vae_state:
            raise CheckpointError(f"{checkpoint}: state_dict has no '{MOTIONGPT_VAE_PREFIX}*' keys (VQ-VAE weights)")
        model = T5ForConditionalGeneration(config)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        check_state_dict(model, lm_state, where=f"{checkpoint} (keys under '{MOTIONGPT_LM_PREFIX}')")
        head, embeddings = lm_state.get("lm_head.weight"), lm_state.get("shared.weight")
        if head is not None and embeddings is not None and not torch.equal(head, embeddings):
            # flan-t5 (so MotionGPT) has a head of its own, but transformers 5 ties T5's head to the input
            # embeddings whatever config.json says: loaded tied, both would end up holding the head
            model.lm_head.weight = nn.Parameter(head.clone())
            model.config.tie_word_embeddings = False
        model.load_state_dict(lm_state, strict=True)
        model.eval()
        return cls(model, tokenizer, codebook_size, "t5", templates, default_template), vae_state

    def save(self, directory: str | Path) -> None:
        """Model and tokenizer ``save_pretrained`` (safetensors) + ``motionpref_policy.json``, atomically."""
        metadata = {
            "format": METADATA_FORMAT,
            "arch": self.arch,
            "codebook_size": self.codebook_size,
            "motion_offset": self.motion_offset,
            "templates": list(self.templates),
            "default_template": self.default_template,
        }
        FOLDER.save(directory, metadata, pretrained_writer(self.model, self.tokenizer))

    @classmethod
    def load(cls, directory: str | Path) -> MotionPolicy:
        directory = Path(directory)
        meta, model, tokenizer = load_motion_lm(
            directory, FOLDER, {"t5": T5ForConditionalGeneration, "causal": AutoModelForCausalLM}
        )
        policy = cls(
            model,
            tokenizer,
            meta["codebook_size"],
            meta["arch"],
            meta["templates"],
            meta.get("default_template", DEFAULT_TEMPLATE),
        )
        check_motion_offset(directory / METADATA_FILE, meta, policy.motion_offset)
        return policy

    # ---------------------------------------------------------------------------------------------- text
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def start_id(self) -> int:
        return self.motion_offset + self.codebook_size

    @property
    def end_id(self) -> int:
        return self.motion_offset + self.codebook_size + 1

    @property
    def mask_id(self) -> int:
        return self.motion_offset + self.codebook_size + 2

    def prompt(self, caption: str, template: str | None = None) -> str:
        template = self.default_template if template is None else template
        if CAPTION_PLACEHOLDER not in template:
            raise ValueError(f"template {template!r} lacks the {CAPTION_PLACEHOLDER} placeholder")
        return template.replace(CAPTION_PLACEHOLDER, caption.strip())

    def _check_codes(self, codes: Sequence[int]) -> None:
        if len(codes) == 0:
            raise ValueError("a motion needs at least one code")
        bad = [c for c in codes if not 0 <= int(c) < self.codebook_size]
        if bad:
            raise ValueError(f"motion code {bad[0]} outside [0, {self.codebook_size})")

    def motion_text(self, codes: Sequence[int]) -> str:
        """MotionGPT's string form ``<motion_id_K><motion_id_c1>...<motion_id_{K+1}>``."""
        self._check_codes(codes)
        k = self.codebook_size
        return motion_token(k) + "".join(motion_token(int(c)) for c in codes) + motion_token(k + 1)

    def target_ids(self, codes: Sequence[int]) -> list[int]:
        """Token ids of the answer: start, codes, end, ``</s>`` (what ``tokenizer(motion_text(codes))`` gives
        with T5's trailing eos, built directly so no tokenizer quirk can split a motion token)."""
        self._check_codes(codes)
        body = [self.motion_offset + int(c) for c in codes]
        return [self.start_id, *body, self.end_id, self.tokenizer.eos_token_id]

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        return [[*ids, self.tokenizer.eos_token_id] for ids in encoded]

    def encode_prompts(self, prompts: Sequence[str], padding_side: str = "right") -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` (B, S) on the model's device; each prompt ends in ``</s>``."""
        if not prompts:
            raise ValueError("no prompts to encode")
        rows = self.prompt_ids(prompts)
        ids = _pad(rows, self.tokenizer.pad_token_id, padding_side)
        mask = _pad([[1] * len(r) for r in rows], 0, padding_side)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def parse_motion(self, token_ids: Sequence[int]) -> list[int] | None:
        """Codes between the first start and the following end token, as MotionGPT's ``get_middle_str``; None
        when there is no start, no end after it, no code between them, or a non-code token between them."""
        ids = [int(t) for t in token_ids]
        if self.start_id not in ids:
            return None
        begin = ids.index(self.start_id) + 1
        if self.end_id not in ids[begin:]:
            return None
        body = ids[begin : ids.index(self.end_id, begin)]
        codes = [t - self.motion_offset for t in body]
        if not codes or any(not 0 <= c < self.codebook_size for c in codes):
            return None
        return codes

    # ------------------------------------------------------------------------------------------- scoring
    def token_scores(self, prompts: Sequence[str], codes: Sequence[Sequence[int]]) -> TargetScores:
        """Teacher-forced log-probabilities of each answer token (start, codes, end, ``</s>``) given the
        prompt. Differentiable; the caller chooses train/eval mode."""
        if len(prompts) != len(codes):
            raise ValueError(f"{len(prompts)} prompts but {len(codes)} code sequences")
        targets = [self.target_ids(c) for c in codes]
        device = self.device
        if self.arch == "t5":
            enc = self.encode_prompts(prompts)
            labels = _pad(targets, -100).to(device)
            decoder_inputs = _pad(
                [[self.decoder_start_id, *t[:-1]] for t in targets],
                self.tokenizer.pad_token_id,
            )
            logits = self.model(**enc, decoder_input_ids=decoder_inputs.to(device)).logits
        else:
            prompt_rows = self.prompt_ids(prompts)
            sequences = [p + t for p, t in zip(prompt_rows, targets, strict=True)]
            ids = _pad(sequences, self.tokenizer.pad_token_id).to(device)
            attention = _pad([[1] * len(s) for s in sequences], 0).to(device)
            # Position j predicts token j + 1: drop the last logit and the first label.
            logits = self.model(input_ids=ids, attention_mask=attention).logits[:, :-1]
            labels = _pad([[-100] * len(p) + t for p, t in zip(prompt_rows, targets, strict=True)], -100)
            labels = labels[:, 1:].to(device)
        mask = labels != -100
        index = labels.clamp(min=0).unsqueeze(-1)
        logits = logits.float()
        logprobs = (logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)) * mask
        correct = (logits.argmax(-1) == labels) & mask
        return TargetScores(logprobs=logprobs, mask=mask, correct=correct)

    def sequence_logprobs(
        self, prompts: Sequence[str], codes: Sequence[Sequence[int]], reduction: str = "sum"
    ) -> Tensor:
        """log pi(y | x) of each motion answer y (start, codes, end, ``</s>``): ``(B,)``, differentiable.
        ``reduction="mean"`` divides by the answer length (the length-normalised form some losses use)."""
        scores = self.token_scores(prompts, codes)
        total = scores.logprobs.sum(-1)
        if reduction == "sum":
            return total
        if reduction == "mean":
            return total / scores.mask.sum(-1)
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

    # ------------------------------------------------------------------------------------------ sampling
    def sample(
        self,
        captions: Sequence[str],
        seeds: Sequence[int],
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = 64,
        template: str | None = None,
        constrained: bool = True,
    ) -> SampleBatch:
        """One motion per caption, sample i drawn with seed ``seeds[i]`` (same result whatever the batch).

        ``constrained`` restricts decoding to what a motion can hold (``_MotionGrammar``); without it the model
        samples from its whole vocabulary, and outputs with a word inside the motion come back invalid."""
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature} (use top_k=1 for greedy)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be >= 1")
        prompts = [self.prompt(c, template) for c in captions]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        token_ids: list[list[int]] = []
        try:
            for begin in range(0, len(prompts), batch_size):
                chunk = prompts[begin : begin + batch_size]
                warpers: list[LogitsProcessor] = []
                if constrained:
                    codes = range(self.motion_offset, self.motion_offset + self.codebook_size)
                    warpers.append(_MotionGrammar(self.start_id, self.end_id, eos, codes))
                warpers.append(TemperatureLogitsWarper(temperature))
                if top_k is not None:
                    warpers.append(TopKLogitsWarper(top_k))
                if top_p is not None:
                    warpers.append(TopPLogitsWarper(top_p))
                warpers.append(_RowSeededGumbel(seeds[begin : begin + batch_size], self.device))
                # Left padding for the decoder-only model so every prompt ends where generation starts.
                enc = self.encode_prompts(chunk, padding_side="right" if self.arch == "t5" else "left")
                with torch.no_grad():
                    out = self.model.generate(
                        **enc,
                        logits_processor=LogitsProcessorList(warpers),
                        do_sample=False,
                        num_beams=1,
                        max_new_tokens=max_new_tokens,
                        eos_token_id=eos,
                        pad_token_id=pad,
                    )
                generated = out[:, 1:] if self.arch == "t5" else out[:, enc["input_ids"].shape[1] :]
                for row in generated.tolist():
                    token_ids.append(row[: row.index(eos)] if eos in row else row)
        finally:
            self.model.train(was_training)
        parsed = [self.parse_motion(ids) for ids in token_ids]
        return SampleBatch(
            token_ids=token_ids,
            codes=[p if p is not None else [] for p in parsed],
            valid=[p is not None for p in parsed],
        )


def load_motion_lm(
    directory: Path, layout: FolderLayout, model_classes: Mapping[str, Any]
) -> tuple[dict[str, Any], PreTrainedModel, PreTrainedTokenizerBase]:
    """Metadata, model and tokenizer of a folder written by a policy or a reward model; the metadata's ``arch``
    picks the model class."""
    meta = layout.read(directory)
    if meta["arch"] not in ARCHS:
        raise CheckpointError(f"{directory / layout.metadata}: arch must be one of {ARCHS}, got {meta['arch']!r}")
    model, tokenizer = load_pretrained(directory, model_classes[meta["arch"]], AutoTokenizer)
    return meta, model, tokenizer


def check_motion_offset(meta_path: Path, meta: Mapping[str, Any], found: int) -> None:
    """The tokenizer must put the motion tokens where they were when the model was trained."""
    if found != meta["motion_offset"]:
        raise CheckpointError(
            f"{meta_path}: motion_offset {meta['motion_offset']} but the tokenizer puts <motion_id_0> at {found}"
        )


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_motiongpt_state(checkpoint: Path) -> dict[str, Tensor]:
    """The ``state_dict`` of a MotionGPT checkpoint, read with ``weights_only=True``."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: MotionGPT checkpoint not found")
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError depending on what it refused
        raise CheckpointError(
            f"{checkpoint}: cannot be read with torch.load(weights_only=True) ({exc}). A Lightning "
            "checkpoint that pickles its config must first be reduced, once and only if you trust it, to "
            "{'state_dict': ckpt['state_dict']} with torch.save"
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{checkpoint}: expected a dict with a 'state_dict' dict of tensors")
    state = payload["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{checkpoint}: state_dict entry {bad[0]!r} is not a tensor")
    return state
