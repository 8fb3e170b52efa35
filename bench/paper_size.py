"""The papers' models at the papers' sizes: parameters, training-step and sampling cost, FLOPs, GPU projections.

Each model is built from the project's own classes and configs with random weights (nothing can be downloaded
here; the weights do not change the cost):

- ``policy``: MotionGPT-base, ``T5ForConditionalGeneration`` with google/flan-t5-base's config (d_model 768, d_ff
  2048 gated-gelu, 12 + 12 layers, 12 heads, untied head) and its embeddings resized to ``len(tokenizer)`` =
  32,100 SentencePiece tokens + 515 motion tokens (512 codes, start, end, mask), as ``MotionPolicy.from_motiongpt``
  (and MotionGPT's ``MLM.__init__``) does, wrapped in ``MotionPolicy``. The prompts are tokenised by a word-level
  tokenizer over the benchmark captions (the flan-t5 SentencePiece files are not here): about one token a word,
  a little under SentencePiece's count, and it changes only the encoder's share of the cost;
- ``vqvae``: ``MotionVQVAE(VQVAEConfig.real())``: 512 codes of 512 dims, width 512, depth 3 (MotionGPT / T2M-GPT);
- ``mdm``: ``MDMPolicy(MDMConfig.real())``: 8 layers x 512, 4 heads, ff 1024, 50 diffusion steps (the model SoPo
  finetunes), conditioned on CLIP ViT-B/32's text tower (22 tokens);
- ``mld``: ``MLDPolicy(MLDConfig.real())``: VAE and denoiser of 9 layers, latent 1 x 256, 4 heads, ff 1024, as
  ChenFengYe/motion-latent-diffusion's ``configs/config_mld_humanml3d.yaml`` (``latent_dim: [1, 256]``,
  ``ff_size: 1024``, ``num_layers: 9``, ``num_head: 4``) and ``configs/modules/denoiser.yaml``
  (``text_encoded_dim: 768``), conditioned on CLIP ViT-L/14's text tower (77 tokens).

The CLIP text towers are ``transformers.CLIPTextModelWithProjection`` at the published sizes with random weights,
behind a stand-in tokenizer (words hashed to ids): the project's ``CLIPTextEncoder`` pads every caption to its
``max_length``, so the cost does not depend on the words.

For each model: its training step as its trainer runs it (forward, backward, gradient clipping, AdamW), at a
stated batch; a batch of sampling (the policy's KV-cached ``generate`` of 52 tokens, DDIM with classifier-free
guidance for MDM and MLD, the VQ-VAE's decoder). Every measurement runs once under
``torch.utils.flop_counter.FlopCounterMode`` (that run is also the warm-up; the count covers matmuls, convolutions
and attention, forward and backward, not elementwise ops or the optimiser), then ``--repeats`` times timed
(``time.perf_counter``; the median is reported). Each model runs in a fresh process whose peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is reported beside the same figure right after the imports; on
CUDA, ``torch.cuda.max_memory_allocated`` per measurement too.

From the measured FLOPs the script projects the papers' experiments onto one and eight H100s (and SoPo onto the
RTX 4090D its paper names), every assumption recorded in the JSON so a reader can recompute them
(``--reproject`` recomputes the projections from the stored measurements after an edit of ``ASSUMPTIONS``).

    python bench/paper_size.py [--device cpu|cuda] [--dtype fp32|bf16] [--repeats 3] [--threads N]
                               [--sections policy vqvae mdm mld] [--readme /tmp/paper_size_readme.md]
    python bench/paper_size.py --reproject     # the projections again, from the stored measurements

Prints a table and writes ``reports/bench/paper_size.json`` (``--out``); ``--readme`` also writes the projection
and measurement tables as markdown. With ``--threads 1`` on this project's 2-core machine, beside other jobs, the
default run takes about 8 minutes (2 threads there are slower, not faster: small ops wait for the second OpenMP
thread while other jobs hold the cores).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from sampling import CAPTIONS  # the token-sampling benchmark's captions (bench/ is on a bench script's path)
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from motionpref.config import (
    DiffusionSamplingConfig,
    DiffusionTrainConfig,
    DPOConfig,
    LoraConfig,
    MDMConfig,
    MLDConfig,
    TextEncoderConfig,
    VQVAEConfig,
    VQVAETrainConfig,
)
from motionpref.io import write_json
from motionpref.models.diffusion import (
    DiffusionPolicy,
    MDMPolicy,
    MLDPolicy,
    TextEncoder,
    denoising_losses,
    lengths_to_mask,
)
from motionpref.models.policy import CAPTION_PLACEHOLDER, DEFAULT_TEMPLATE, T2M_TEMPLATES, MotionPolicy
from motionpref.models.tokenizer import add_motion_tokens, build_word_tokenizer
from motionpref.models.vqvae import MotionVQVAE
from motionpref.progress import quiet_libraries
from motionpref.train.dpo import logprob_reduction, reference_logprobs
from motionpref.train.losses import preference_loss, sopo_loss, sopo_weight
from motionpref.train.preference import (
    PreferencePair,
    Reference,
    apply_lora,
    disable_dropout,
    pair_logprobs,
)
from motionpref.train.vqvae import vqvae_loss

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "bench" / "paper_size.json"
SECTIONS = ("policy", "vqvae", "mdm", "mld")

# google/flan-t5-base's config.json (the T5 MotionGPT-base finetunes). Its 32,128 embedding rows are padding
# beyond the tokenizer's 32,100 entries; MotionGPT adds 515 motion tokens and resizes to len(tokenizer).
FLAN_T5_BASE = {
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
FLAN_T5_TOKENIZER_LEN = 32100
CODEBOOK = 512
# Motion lengths in codes: HumanML3D clips are 40..196 frames (10..49 codes at 4 frames a code), 7.0 s on
# average (about 140 frames, 35 codes); answers draw 20..49 codes (mean 34.5), plus start, end and </s>.
ANSWER_CODES = (20, 49)
MAX_NEW_TOKENS = 52  # 49 codes + start, end, </s>: the longest HumanML3D motion
FRAMES = 196  # diffusion batches pad to their longest clip, which in a batch of HumanML3D clips is ~196
# CLIP text towers (openai/clip-vit-base-patch32 and clip-vit-large-patch14 text configs)
CLIP_B32 = {
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "projection_dim": 512,
}
CLIP_L14 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
}

# Projection assumptions (recorded in the JSON; change them here and run --reproject to recompute).
ASSUMPTIONS: dict[str, Any] = {
    "h100_peak_flops": 989e12,  # H100 SXM dense bf16 (tensor cores), no sparsity
    "mfu": 0.35,  # model FLOPs utilisation assumed for these small models in bf16
    "scaling_efficiency_8_gpus": 0.85,  # data parallel, gradients all-reduced over NVLink
    # Small models on an H100 do not fill it: eager PyTorch launches every kernel from Python. Assumed floors:
    "train_step_floor_s": 0.05,  # one optimiser step of T5-base (forward, backward, AdamW), whatever the batch
    "decode_step_floor_s": 0.010,  # one KV-cached decode step of T5-base through transformers' generate
    "diffusion_forward_floor_s": 0.003,  # one MDM/MLD denoiser forward (8-9 small layers)
    "vqvae_step_floor_s": 0.02,  # one VQ-VAE optimiser step (~40 convolutions forward and backward, AdamW)
    "rtx_4090d_fp32_flops": 73.5e12,  # 14,592 CUDA cores x 2 x 2.52 GHz; MDM's code trains in fp32
    "rtx_4090d_bf16_flops": 147e12,  # tensor cores, fp32 accumulate (GeForce rate), for comparison
}


# ------------------------------------------------------------------------------------------------ models


def paper_policy(seed: int = 0) -> MotionPolicy:
    """MotionGPT-base at its size with random weights: flan-t5-base's T5 resized to 32,100 + 515 rows."""
    templates = (*T2M_TEMPLATES, DEFAULT_TEMPLATE)
    words = [t.replace(CAPTION_PLACEHOLDER, " ") for t in templates]
    tokenizer = build_word_tokenizer([*CAPTIONS, *words])
    add_motion_tokens(tokenizer, CODEBOOK)
    from transformers import T5Config, T5ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE))
    model.resize_token_embeddings(FLAN_T5_TOKENIZER_LEN + CODEBOOK + 3, mean_resizing=False)
    # transformers 5's T5Config forces tie_word_embeddings=True (configuration_t5.py: "we tie weights always"),
    # so lm_head would share the input embedding; flan-t5-base's head is its own 32,615 x 768 matrix: untie it.
    if model.lm_head.weight is model.shared.weight:
        model.lm_head.weight = nn.Parameter(model.shared.weight.detach().clone())
    return MotionPolicy(model, tokenizer, CODEBOOK, "t5")


class RandomCLIPText(TextEncoder):
    """CLIP's text tower (``CLIPTextModelWithProjection``) at a published size with random weights, frozen, with
    a stand-in tokenizer: words hashed to ids, start and end tokens, padded to ``max_length`` with the end token
    as ``CLIPTextEncoder`` pads (so the cost is the real encoder's)."""

    def __init__(self, sizes: dict[str, int], max_length: int) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        self.config = TextEncoderConfig(kind="clip", clip_dir=Path("random-init"), max_length=max_length)
        config = CLIPTextConfig(
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            **sizes,
        )
        self.clip = CLIPTextModelWithProjection(config).eval().requires_grad_(False)
        self.dim = config.projection_dim
        self.max_length = max_length

    @property
    def device(self) -> torch.device:
        return self.clip.text_projection.weight.device

    def encode(self, texts: Sequence[str]) -> Tensor:
        rows = []
        for text in texts:
            ids = [1 + zlib.crc32(w.encode()) % 49000 for w in text.lower().split()][: self.max_length - 2]
            row = [49406, *ids, 49407]
            rows.append(row + [49407] * (self.max_length - len(row)))
        with torch.no_grad():
            return self.clip(input_ids=torch.tensor(rows, device=self.device)).text_embeds.float()


# ------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Meter:
    """Runs each measurement: one run under FlopCounterMode (also the warm-up), then ``repeats`` timed runs."""

    def __init__(self, device: torch.device, dtype: str, repeats: int) -> None:
        self.device, self.dtype, self.repeats = device, dtype, repeats

    def amp(self) -> AbstractContextManager:
        if self.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def __call__(self, name: str, fn: Callable[[], object], items: int, repeats: int | None = None, **extra) -> dict:
        repeats = self.repeats if repeats is None else repeats
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        _sync(self.device)
        start = time.perf_counter()
        # nn.TransformerEncoderLayer's eval-mode fast path is one fused op the counter does not know: count the
        # FLOPs on the decomposed path (the same matmuls), time the default one
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with self.amp(), FlopCounterMode(display=False) as counter:
                fn()
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        _sync(self.device)
        counted_seconds = time.perf_counter() - start
        runs = []
        for _ in range(repeats):
            _sync(self.device)
            start = time.perf_counter()
            with self.amp():
                fn()
            _sync(self.device)
            runs.append(time.perf_counter() - start)
        seconds = statistics.median(runs)
        flops = counter.get_total_flops()
        result = {
            "batch": items,
            "seconds": seconds,
            "min_seconds": min(runs),
            "runs": runs,
            "warmup_seconds_under_flop_counter": counted_seconds,
            "flops": flops,
            "flops_per_item": flops / items,
            "items_per_s": items / seconds,
            "achieved_gflops_per_s": flops / seconds / 1e9,
            "process_maxrss_mib_after": _maxrss_mib(),
            **extra,
        }
        if cuda:
            result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        print(
            f"  {name:<28} batch {items:>4}  {seconds:8.3f} s  {flops / 1e12:8.3f} TFLOP  "
            f"{flops / seconds / 1e9:7.1f} GFLOP/s",
            flush=True,
        )
        return result


def _params(module: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _adamw(params: list[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0)


def _update(optimiser: torch.optim.Optimizer, params: list[nn.Parameter], loss: Tensor, clip: float | None) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimiser.step()


# --------------------------------------------------------------------------------------------- sections


def section_policy(meter: Meter, opts: dict) -> dict:
    device = meter.device
    policy = paper_policy(seed=0)
    policy.model.to(device)
    rng = random.Random(0)
    b, s = opts["policy_batch"], opts["policy_sample_batch"]

    # lengths spread evenly over ANSWER_CODES, so that every batch has their mean (34.5 codes, HumanML3D's ~35)
    lengths = [round(ANSWER_CODES[0] + (ANSWER_CODES[1] - ANSWER_CODES[0]) * i / max(b - 1, 1)) for i in range(b)]

    def codes(n: int) -> list[int]:
        return [rng.randrange(CODEBOOK) for _ in range(n)]

    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
    chosen, rejected = [codes(n) for n in lengths], [codes(n) for n in reversed(lengths)]
    prompts = [policy.prompt(c) for c in captions]
    prompt_tokens = statistics.mean(len(r) for r in policy.prompt_ids(prompts))
    answer_tokens = sum(len(c) + 3 for c in chosen)
    pair_tokens = answer_tokens + sum(len(r) + 3 for r in rejected)
    out: dict[str, Any] = {
        "model": "T5ForConditionalGeneration, google/flan-t5-base config, embeddings resized to 32,100 + 515",
        "config": FLAN_T5_BASE,
        "embedding_rows": policy.model.get_input_embeddings().weight.shape[0],
        "parameters": _params(policy.model),
        "mean_prompt_tokens": prompt_tokens,
        "mean_answer_tokens": answer_tokens / b,
        "steps": {},
    }

    # Sampling first, on the plain model: KV-cached generate of up to 52 tokens (random weights rarely close a
    # motion, so nearly every row runs the full 52 steps).
    seeds = list(range(s))
    sample_captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(s)]
    batches: list = []

    def sample() -> None:
        batches.append(policy.sample(sample_captions, seeds, max_new_tokens=MAX_NEW_TOKENS, batch_size=s))

    result = meter("sample (generate, KV cache)", sample, s, repeats=opts["sample_repeats"])
    generated = sum(len(t) + (len(t) < MAX_NEW_TOKENS) for t in batches[-1].token_ids)
    result.update(
        generated_tokens=generated,
        tokens_per_s=generated / result["seconds"],
        decode_steps=max(len(t) + (len(t) < MAX_NEW_TOKENS) for t in batches[-1].token_ids),
    )
    out["sampling"] = result
    batches.clear()

    # SFT with full finetuning (train_policy: token-mean NLL, clipping 1.0, AdamW), dropout on.
    policy.model.train()
    full = list(policy.model.parameters())
    sft_optimiser = _adamw(full, 2e-4)  # MotionGPT's lr

    def sft() -> None:
        scores = policy.token_scores(prompts, chosen)
        _update(sft_optimiser, full, -scores.logprobs.sum() / scores.mask.sum(), 1.0)

    result = meter("sft step (full finetuning)", sft, b, answer_tokens=answer_tokens)
    result["answer_tokens_per_s"] = answer_tokens / result["seconds"]
    # The usual analytic count, for comparison: 6 x N x tokens (forward 2N, backward 4N per token), with N the
    # weights each token passes through: encoder blocks for prompt tokens, decoder blocks and the head for answer
    # tokens (embedding lookups cost nothing; attention scores are left out of this formula, not of the count).
    model = policy.model
    n_enc = _params(model.encoder) - model.shared.weight.numel()
    n_dec = _params(model.decoder) - model.shared.weight.numel() + model.lm_head.weight.numel()
    result["analytic_6_n_tokens"] = 6 * (n_enc * prompt_tokens * b + n_dec * answer_tokens)
    result["analytic_formula"] = "6 x (N_encoder x prompt tokens + (N_decoder + N_head) x answer tokens)"
    # token_scores pads prompts and answers to the batch's longest: the matmuls run over the padded positions
    padded_prompts = b * max(len(r) for r in policy.prompt_ids(prompts))
    padded_answers = b * max(len(c) + 3 for c in chosen)
    result["analytic_6_n_padded_positions"] = 6 * (n_enc * padded_prompts + n_dec * padded_answers)
    result["padded_positions"] = {"prompt": padded_prompts, "answer": padded_answers}
    out["non_embedding_parameters"] = {"encoder": n_enc, "decoder_and_head": n_dec}
    out["lm_head_tied_to_embedding"] = model.lm_head.weight is model.shared.weight
    out["steps"]["sft_full"] = result
    sft_optimiser = full = None  # AdamW's state of the whole model: free it before DPO
    gc.collect()

    # DPO as the paper runs it: LoRA (r 8, alpha 16, q and v), dropout off, IPO on mean log-probs; the reference
    # is the base model with the adapters disabled, recomputed every step as trl 0.8 does (``online``) or
    # computed once before training (``precomputed``, what finetune@dpo does).
    disable_dropout(policy.model)
    apply_lora(policy, LoraConfig())
    policy.model.train()
    reference = Reference(policy)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    config = DPOConfig()
    optimiser = _adamw(params, config.lr)
    reduction = logprob_reduction(config)
    pairs = [
        PreferencePair(f"pair-{i}", captions[i], tuple(chosen[i]), tuple(rejected[i]), "better", 2.0) for i in range(b)
    ]
    precomputed = reference_logprobs(reference, pairs, reduction)

    def dpo(ref: tuple[Tensor, Tensor] | None) -> None:
        rw, rl = reference_logprobs(reference, pairs, reduction) if ref is None else ref
        pw, pl = pair_logprobs(policy, captions, chosen, rejected, reduction)
        loss = preference_loss(config.loss, pw, pl, rw.to(pw.device), rl.to(pw.device), 0.1, 0.0).mean()
        _update(optimiser, params, loss, config.grad_clip)

    lora = {"trainable_parameters": sum(p.numel() for p in params), "answer_tokens": pair_tokens}
    out["steps"]["dpo_lora_online"] = meter("dpo step (LoRA, ref inside)", lambda: dpo(None), b, **lora)
    out["steps"]["dpo_lora_precomputed"] = meter(
        "dpo step (LoRA, ref precomputed)", lambda: dpo(precomputed), b, **lora
    )
    out["steps"]["reference_forward"] = meter(
        "reference forward (no grad)",
        lambda: reference_logprobs(reference, pairs, reduction),
        2 * b,
        answer_tokens=pair_tokens,
    )
    return out


def section_vqvae(meter: Meter, opts: dict) -> dict:
    device = meter.device
    config, train = VQVAEConfig.real(), VQVAETrainConfig.real()
    torch.manual_seed(0)
    model = MotionVQVAE(config).to(device).train()
    params = list(model.parameters())
    optimiser = _adamw(params, train.lr, betas=(0.9, 0.99))
    b = opts["vqvae_batch"]
    x = torch.randn(b, train.window, config.feature_dim, device=device)

    def step() -> None:  # train_vqvae's step: no clipping
        recon, commit, _ = model(x)
        loss, _ = vqvae_loss(recon, x, commit, train.commit, train.vel)
        _update(optimiser, params, loss, None)

    out: dict[str, Any] = {
        "model": "MotionVQVAE(VQVAEConfig.real())",
        "config": config.model_dump(),
        "parameters": _params(model),
        "steps": {},
    }
    out["steps"]["train"] = meter("vq-vae step", step, b, frames=b * train.window, window=train.window)
    model.eval()
    codes = torch.randint(0, config.nb_code, (opts["policy_sample_batch"], 49), device=device)
    out["sampling"] = meter("vq-vae decode 49 codes", lambda: model.decode(codes), codes.shape[0])
    return out


def _sopo_step(
    policy: DiffusionPolicy,
    reference: DiffusionPolicy,
    params: list[nn.Parameter],
    optimiser: torch.optim.Optimizer,
    x_w: Tensor,
    x_l: Tensor,
    mask: Tensor,
    captions: list[str],
    generator: torch.Generator,
) -> None:
    """One SoPo update as ``train.diffusion.run_sopo`` makes it, after its sampling and scoring: the preferred and
    unpreferred motions in the diffusion space (no gradient), the policy's denoising losses (with gradient) and the
    reference's at one timestep and noise per pair, ``sopo_loss``, clipping, AdamW (``_Finetune.pair_losses``)."""
    with torch.no_grad():
        z_w, m_w = policy.to_diffusion(x_w, mask, generator)
        z_l, m_l = policy.to_diffusion(x_l, mask, generator)
        cond = policy.condition(captions)
    b = len(captions)
    t = torch.randint(0, policy.config.diffusion_steps, (b,), generator=generator).to(z_w.device)
    noise = torch.randn(z_w.shape, generator=generator).to(z_w)
    z, both = torch.cat([z_w, z_l]), (lambda v: torch.cat([v, v]))
    m = torch.cat([m_w, m_l]) if m_w is not None and m_l is not None else None
    losses = denoising_losses(policy, z, m, both(cond), both(t), both(noise))
    with torch.no_grad():
        ref = denoising_losses(reference, z, m, both(cond), both(t), both(noise))
    beta_w = sopo_weight(torch.full((b,), 0.9, device=z.device), 1.0, 2.0)
    valuable = torch.ones(b, dtype=torch.bool, device=z.device)
    loss = sopo_loss(-losses[:b], -ref[:b], -losses[b:], -ref[b:], beta_w, 1.0, valuable).mean()
    _update(optimiser, params, loss, 1.0)


def _diffusion_common(meter: Meter, policy: DiffusionPolicy, denoiser: nn.Module, opts: dict, family: str) -> dict:
    """The SoPo step and DDIM sampling of a diffusion policy (the text encoder and MLD's VAE frozen)."""
    device = meter.device
    out: dict[str, Any] = {"steps": {}}
    b = opts["sopo_batch"]
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
    lengths = [FRAMES] * b
    mask = lengths_to_mask(lengths).to(device)
    x_w, x_l = torch.randn(b, FRAMES, 263, device=device), torch.randn(b, FRAMES, 263, device=device)
    disable_dropout(policy)
    policy.requires_grad_(False)
    denoiser.requires_grad_(True)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimiser = _adamw(params, 1e-4)
    generator = torch.Generator().manual_seed(0)
    policy.train()
    out["steps"]["sopo_update"] = meter(
        "sopo update (pair losses)",
        lambda: _sopo_step(policy, reference, params, optimiser, x_w, x_l, mask, captions, generator),
        b,
        frames=FRAMES,
    )
    reference = optimiser = None
    gc.collect()
    sampling = DiffusionSamplingConfig.mdm() if family == "mdm" else DiffusionSamplingConfig.mld()
    s = opts["diffusion_sample_batch"]
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(s)]
    calls: list[int] = []
    handle = denoiser.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    out["sampling"] = meter(
        f"sample (DDIM {sampling.steps}, guidance {sampling.guidance})",
        lambda: policy.sample(texts, [FRAMES] * s, sampling, seeds=list(range(s))),
        s,
        repeats=opts["sample_repeats"],
        frames=FRAMES,
        sampling=sampling.model_dump(),
    )
    handle.remove()
    out["sampling"]["denoiser_forwards_per_call"] = len(calls) // (1 + opts["sample_repeats"])
    out["sampling"]["rows_per_forward"] = max(calls)
    return out


def section_mdm(meter: Meter, opts: dict) -> dict:
    device = meter.device
    torch.manual_seed(0)
    config = MDMConfig.real()
    policy = MDMPolicy(config, RandomCLIPText(CLIP_B32, max_length=22)).to(device)
    out: dict[str, Any] = {
        "model": "MDMPolicy(MDMConfig.real()), CLIP ViT-B/32 text tower (random weights, 22 tokens)",
        "config": config.model_dump(),
        "parameters": _params(policy.model),
        "text_encoder_parameters": _params(policy.text_encoder),
        "steps": {},
    }
    b = opts["mdm_batch"]
    x = torch.randn(b, FRAMES, config.feature_dim, device=device)
    mask = lengths_to_mask([FRAMES] * b).to(device)
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
    policy.train()
    policy.text_encoder.requires_grad_(False)
    params = list(policy.model.parameters())
    optimiser = _adamw(params, DiffusionTrainConfig().lr)
    generator = torch.Generator().manual_seed(0)

    def pretrain() -> None:  # train.diffusion.train_policy's step: the diffusion loss, clipping, AdamW
        _update(optimiser, params, policy.training_loss(x, mask, texts, generator), 1.0)

    out["steps"]["pretrain"] = meter("mdm denoising step", pretrain, b, frames=FRAMES)
    optimiser = None
    common = _diffusion_common(meter, policy, policy.model, opts, "mdm")
    out["steps"].update(common.pop("steps"))
    out.update(common)
    return out


def section_mld(meter: Meter, opts: dict) -> dict:
    device = meter.device
    torch.manual_seed(0)
    config = MLDConfig.real()
    policy = MLDPolicy(config, RandomCLIPText(CLIP_L14, max_length=77)).to(device)
    out: dict[str, Any] = {
        "model": "MLDPolicy(MLDConfig.real()), CLIP ViT-L/14 text tower (random weights, 77 tokens)",
        "config": config.model_dump(),
        "parameters": _params(policy.vae) + _params(policy.denoiser),
        "vae_parameters": _params(policy.vae),
        "denoiser_parameters": _params(policy.denoiser),
        "text_encoder_parameters": _params(policy.text_encoder),
        "steps": {},
    }
    b = opts["mdm_batch"]
    x = torch.randn(b, FRAMES, config.feature_dim, device=device)
    mask = lengths_to_mask([FRAMES] * b).to(device)
    policy.train()
    policy.text_encoder.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    vae_params = list(policy.vae.parameters())
    vae_optimiser = _adamw(vae_params, 1e-4)
    out["steps"]["vae"] = meter(
        "mld vae step",
        lambda: _update(vae_optimiser, vae_params, policy.vae_loss(x, mask, generator), 1.0),
        b,
        frames=FRAMES,
    )
    vae_optimiser = None
    with torch.no_grad():
        latents = policy.vae.encode(x, mask, generator)[1]
    out["steps"]["vae_encode"] = meter(
        "mld vae encode (no grad)", lambda: policy.to_diffusion(x, mask), b, frames=FRAMES
    )
    den_params = list(policy.denoiser.parameters())
    den_optimiser = _adamw(den_params, 1e-4)
    lb = opts["mld_latent_batch"]
    z = latents.repeat(math.ceil(lb / b), 1, 1)[:lb]
    ztexts = [CAPTIONS[i % len(CAPTIONS)] for i in range(lb)]
    out["steps"]["pretrain"] = meter(
        "mld denoising step (latents)",
        lambda: _update(den_optimiser, den_params, policy.diffusion_loss(z, None, ztexts, generator), 1.0),
        lb,
    )
    den_optimiser = None
    common = _diffusion_common(meter, policy, policy.denoiser, opts, "mld")
    out["steps"].update(common.pop("steps"))
    out.update(common)
    return out


SECTION_FNS = {"policy": section_policy, "vqvae": section_vqvae, "mdm": section_mdm, "mld": section_mld}


def run_section(name: str, opts: dict) -> dict:
    """One model in this (fresh) process: its measurements and the process's memory."""
    quiet_libraries()
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    load = list(os.getloadavg())
    baseline = _maxrss_mib()
    start = time.perf_counter()
    print(f"[{name}]", flush=True)
    result = SECTION_FNS[name](Meter(device, opts["dtype"], opts["repeats"]), opts)
    result["memory"] = {
        "measure": "resource.getrusage(RUSAGE_SELF).ru_maxrss of this model's own process (peak resident set)",
        "baseline_after_imports_mib": baseline,
        "peak_mib": _maxrss_mib(),
        "peak_minus_baseline_mib": _maxrss_mib() - baseline,
    }
    result["section_seconds"] = time.perf_counter() - start
    result["load_average"] = {"start": load, "end": list(os.getloadavg())}
    return result


# ------------------------------------------------------------------------------------------- projections


def _experiment(
    name: str,
    what: str,
    steps: int,
    flops_per_step: float,
    floor_per_step_s: float,
    formula: str,
    a: dict,
    extra: dict | None = None,
    floor_per_step_8_gpus_s: float | None = None,
) -> dict:
    """Compute-bound time on 1 and 8 H100s, and the floor: ``steps`` x the per-step latency floor (on 8 GPUs the
    same, unless the floor is work the GPUs split, such as prompts generated one at a time)."""
    total = steps * flops_per_step
    one = total / (a["h100_peak_flops"] * a["mfu"])
    eight = one / (8 * a["scaling_efficiency_8_gpus"])
    floor = steps * floor_per_step_s
    floor8 = steps * (floor_per_step_s if floor_per_step_8_gpus_s is None else floor_per_step_8_gpus_s)
    return {
        "name": name,
        "what": what,
        "optimizer_steps": steps,
        "flops_per_step": flops_per_step,
        "total_flops": total,
        "formula": formula,
        "one_h100_compute_bound_s": one,
        "eight_h100_compute_bound_s": eight,
        "latency_floor_s": floor,
        "latency_floor_8_gpus_s": floor8,
        # a small model cannot run faster than its per-step floor, however many GPUs share the batch
        "one_h100_s": max(one, floor),
        "eight_h100_s": max(eight, floor8),
        **(extra or {}),
    }


def project(models: dict, a: dict = ASSUMPTIONS) -> dict:
    """The papers' experiments from the measured FLOPs per item (sequence, pair, motion, caption)."""
    experiments = []
    if "policy" in models:
        p = models["policy"]
        dpo_pair = p["steps"]["dpo_lora_online"]["flops_per_item"]  # per preference pair, reference inside
        dpo_pre_pair = p["steps"]["dpo_lora_precomputed"]["flops_per_item"]
        fwd_seq = p["steps"]["reference_forward"]["flops_per_item"]  # one forward of one answer, no grad
        train_seq = p["steps"]["sft_full"]["flops_per_item"]  # full finetuning forward + backward of one answer
        gen_seq = p["sampling"]["flops_per_item"]  # generate 52 tokens for one prompt
        steps = math.ceil(3500 * 20 / 64)
        experiments.append(
            _experiment(
                "instructmotion_dpo",
                "InstructMotion DPO: 3.5k pairs x 20 epochs at batch 64, LoRA, IPO, the reference "
                "recomputed every step (trl 0.8's default)",
                steps,
                64 * dpo_pair,
                a["train_step_floor_s"],
                "ceil(3500*20/64) steps x 64 x FLOPs(dpo_lora_online)/pair",
                a,
                {
                    "with_precomputed_reference_total_flops": steps * 64 * dpo_pre_pair,
                    "released_script_note": "commands/dpo_train.sh sets EPOCHS=20 but also MAX_STEPS=1000, which HF's "
                    "Trainer obeys instead: 1000 steps at batch 64 (about 32 epochs of the 1,994 non-skipped training "
                    "pairs); scale by 1000/" + str(steps),
                },
            )
        )
        # PPO (THU-LYJ-Lab/InstructMotion commands/ppo_sep_critic_train.sh and src/scripts/ppo_sep_critic.py):
        # 20 epochs over the prompts of the 2,216 non-skipped pairs' 90% train split (1,994), global batch 32
        # (62 rollouts an epoch, trl drops the last), 4 PPO epochs in minibatches of 8, full finetuning of the
        # policy and of a separate critic (a T5 initialised from the reward model), responses of <= 60 tokens
        # generated one prompt at a time (batch_size=1) for the policy AND the reference, both scored by the reward
        # model (a T5ForSequenceClassification over prompt + response).
        rollouts = 20 * (1994 // 32)
        per_rollout = 32 * (2 * gen_seq + 2 * fwd_seq + 3 * fwd_seq + 4 * 2 * train_seq)
        updates = 4 * 4 * a["train_step_floor_s"]  # 4 PPO epochs x 4 minibatches of 8
        one_by_one = 2 * MAX_NEW_TOKENS * a["decode_step_floor_s"]  # a prompt's policy and reference responses
        experiments.append(
            _experiment(
                "instructmotion_ppo",
                "InstructMotion PPO as released: 20 epochs x 62 rollouts of 32 prompts, 4 PPO "
                "epochs (minibatch 8), full finetuning of policy and separate critic",
                rollouts,
                per_rollout,
                updates + 32 * one_by_one,
                "rollouts x 32 x (2 gen(policy, ref) + 2 reward fwd + 3 fwd(policy, ref, critic) + 4 epochs x 2 "
                "fwd+bwd(policy, critic)) per prompt; reward and critic costed as the policy's forward",
                a,
                {
                    "floor_note": "per rollout: 16 minibatch updates x train_step_floor + 2 x 32 prompts "
                    "generated one at a time x 52 decode steps x decode_step_floor; the sequential generation is "
                    "most of it",
                    "assumed_from": "THU-LYJ-Lab/InstructMotion commands/ppo_sep_critic_train.sh (EPOCHS=20, "
                    "GLOBAL_BATCH_SIZE=32, MINI_BATCH_SIZE=8, PPO_EPOCHS=4, MAX_LENGTH=60) and "
                    "src/scripts/ppo_sep_critic.py (generate batch_size=1, generate_ref_response=True); the project's "
                    "params.yaml paper profile runs one pass (62 steps): scale by 62/1240",
                    "floor_if_generation_batched_s": rollouts
                    * (updates + 2 * MAX_NEW_TOKENS * a["decode_step_floor_s"]),
                },
                floor_per_step_8_gpus_s=updates + 4 * one_by_one,  # each of 8 GPUs generates 4 of the 32 prompts
            )
        )
    for family, k in (("mdm", 4), ("mld", 2)):
        if family not in models:
            continue
        m = models[family]
        sample_motion = m["sampling"]["flops_per_item"]  # 50 DDIM steps, guided, one motion of 196 frames
        update = m["steps"]["sopo_update"]["flops_per_item"]  # per caption: its pair through policy and reference
        captions = 23384  # HumanML3D's train split (with mirrored clips): one epoch, one caption a clip (assumed)
        batch = 64  # assumed; the time does not depend on it when compute-bound
        per_caption = k * sample_motion + update
        steps = math.ceil(captions / batch)
        floor = (
            m["sampling"]["denoiser_forwards_per_call"] * a["diffusion_forward_floor_s"]
            + 3 * a["diffusion_forward_floor_s"]
        )
        exp = _experiment(
            f"sopo_{family}",
            f"SoPo on {family.upper()}: one epoch of HumanML3D's 23,384 training clips (assumed), "
            f"K={k} online samples a caption (50 DDIM steps, guidance), batch {batch}",
            steps,
            batch * per_caption,
            floor,
            "steps x batch x (K x FLOPs(sample one motion) + FLOPs(sopo_update)/caption); TMR scoring "
            "left out (a 4.7M-parameter encoder, <1% of the sampling)",
            a,
            {"sampling_share_of_flops": k * sample_motion / per_caption},
        )
        if family == "mdm":
            # The paper: SoPo on MDM under 100 minutes on one RTX 4090D. MDM's code runs in fp32.
            for label, peak in (("fp32", a["rtx_4090d_fp32_flops"]), ("bf16", a["rtx_4090d_bf16_flops"])):
                seconds = exp["total_flops"] / (peak * a["mfu"])
                exp[f"rtx_4090d_{label}_s"] = seconds
                exp[f"rtx_4090d_{label}_captions_in_100_min"] = 6000 * peak * a["mfu"] / per_caption
        experiments.append(exp)
    if "vqvae" in models:
        v = models["vqvae"]["steps"]["train"]["flops_per_item"]
        experiments.append(
            _experiment(
                "motiongpt_vqvae",
                "MotionGPT's VQ-VAE (T2M-GPT recipe): 300k steps at batch 256 of 64-frame windows",
                300_000,
                256 * v,
                a["vqvae_step_floor_s"],
                "300000 x 256 x FLOPs(train)/window",
                a,
            )
        )
    return {"assumptions": dict(a), "experiments": experiments}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def measurement_markdown(models: dict, machine: dict) -> str:
    """The measured table: every call of every model on this machine."""
    load = machine["load_average"]["start"][0]
    lines = [
        f"Measured on {machine['device']} ({machine['cpus']} cores, {machine['torch_threads']} torch thread(s), "
        f"{machine['dtype']}, 1-minute load average {load:.1f} at the start: other jobs shared the machine): median "
        "seconds of the timed runs, FLOPs of one call, peak resident memory of the model's own process.",
        "",
        "| model | parameters | call | batch | s | FLOPs | GFLOP/s | peak RSS MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name in [s for s in SECTIONS if s in models]:
        m = models[name]
        calls = [*m["steps"].items(), ("sampling", m["sampling"])]
        for i, (call, r) in enumerate(calls):
            head = f"| {name} | {m['parameters']:,} " if i == 0 else "| | "
            tail = f"{m['memory']['peak_mib']:.0f} |" if i == 0 else "|"
            lines.append(
                f"{head}| {call} | {r['batch']} | {r['seconds']:.2f} | {r['flops']:.3g} | "
                f"{r['achieved_gflops_per_s']:.0f} | {tail}"
            )
    return "\n".join(lines) + "\n"


def projection_markdown(projections: dict, machine: dict) -> str:
    a = projections["assumptions"]
    lines = [
        "## Paper-size projections (bench/paper_size.py, reports/bench/paper_size.json)",
        "",
        "FLOPs measured with `torch.utils.flop_counter.FlopCounterMode` on random-weight models at the papers' "
        f"sizes ({machine['device']}, {machine['dtype']}). Compute-bound time = FLOPs / (peak x MFU); 8 GPUs divide "
        "it by 8 x scaling efficiency. A small model cannot beat its per-step latency floor (eager PyTorch launches "
        "every kernel from Python), so the last two columns take the larger of the two.",
        "",
        f"Assumptions: H100 SXM peak dense bf16 {a['h100_peak_flops'] / 1e12:.0f} TFLOP/s, MFU {a['mfu']:.0%}, "
        f"8-GPU scaling efficiency {a['scaling_efficiency_8_gpus']:.0%}; floors: training step "
        f"{a['train_step_floor_s'] * 1000:.0f} ms, T5 decode step {a['decode_step_floor_s'] * 1000:.0f} ms, "
        f"diffusion denoiser forward {a['diffusion_forward_floor_s'] * 1000:.0f} ms, VQ-VAE step "
        f"{a['vqvae_step_floor_s'] * 1000:.0f} ms. Change them in `ASSUMPTIONS` and run "
        "`python bench/paper_size.py --reproject` to recompute from the stored measurements.",
        "",
        "| experiment | steps | FLOPs/step | total FLOPs | 1 H100 compute | 8 H100 compute | floor 1 / 8 GPUs | "
        "**1 H100** | **8 H100** |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in projections["experiments"]:
        lines.append(
            f"| {e['name']} | {e['optimizer_steps']:,} | {e['flops_per_step']:.3g} | {e['total_flops']:.3g} | "
            f"{_duration(e['one_h100_compute_bound_s'])} | {_duration(e['eight_h100_compute_bound_s'])} | "
            f"{_duration(e['latency_floor_s'])} / {_duration(e['latency_floor_8_gpus_s'])} | "
            f"**{_duration(e['one_h100_s'])}** | **{_duration(e['eight_h100_s'])}** |"
        )
    lines.append("")
    for e in projections["experiments"]:
        lines.append(f"- **{e['name']}**: {e['what']}. FLOPs: {e['formula']}.")
        if "rtx_4090d_fp32_s" in e:
            lines.append(
                f"  On one RTX 4090D at the same MFU: {_duration(e['rtx_4090d_fp32_s'])} in fp32 (MDM's code; "
                f"{a['rtx_4090d_fp32_flops'] / 1e12:.1f} TFLOP/s peak), {_duration(e['rtx_4090d_bf16_s'])} in bf16; "
                "the paper reports under 100 minutes, which at fp32 and this MFU fits "
                f"{e['rtx_4090d_fp32_captions_in_100_min']:,.0f} captions (K samples each), "
                f"{e['rtx_4090d_fp32_captions_in_100_min'] / 23384:.1f} epochs. Sampling is "
                f"{e['sampling_share_of_flops']:.0%} of the FLOPs."
            )
        if "released_script_note" in e:
            lines.append(f"  {e['released_script_note']}.")
        if "floor_note" in e:
            lines.append(
                f"  Floor: {e['floor_note']}; with the 32 prompts generated as one batch it would be "
                f"{_duration(e['floor_if_generation_batched_s'])}."
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, fp32 weights")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each training step (after one)")
    parser.add_argument("--sample-repeats", type=int, default=2, help="timed runs of each sampling call")
    parser.add_argument("--policy-batch", type=int, default=8, help="preference pairs / SFT answers per step")
    parser.add_argument("--policy-sample-batch", type=int, default=16)
    parser.add_argument("--vqvae-batch", type=int, default=256, help="windows of 64 frames (T2M-GPT's batch)")
    parser.add_argument("--mdm-batch", type=int, default=16, help="motions per MDM / MLD-VAE step")
    parser.add_argument("--mld-latent-batch", type=int, default=128, help="latents per MLD denoiser step")
    parser.add_argument("--sopo-batch", type=int, default=8, help="captions per SoPo update")
    parser.add_argument("--diffusion-sample-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per model (memory then shared)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--readme", type=Path, help="also write the projection table as markdown here")
    parser.add_argument("--reproject", action="store_true", help="measure nothing: recompute --out's projections")
    args = parser.parse_args(argv)
    if args.reproject:
        report = json.loads(args.out.read_text())
        report["projections"] = project(report["models"])
        markdown = projection_markdown(report["projections"], report["machine"])
        markdown += "\n" + measurement_markdown(report["models"], report["machine"])
        print(markdown)
        write_json(args.out, report)
        if args.readme is not None:
            args.readme.write_text(markdown)
        return report
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    quiet_libraries()
    opts = {
        k: getattr(args, k)
        for k in (
            "device",
            "dtype",
            "repeats",
            "sample_repeats",
            "policy_batch",
            "policy_sample_batch",
            "vqvae_batch",
            "mdm_batch",
            "mld_latent_batch",
            "sopo_batch",
            "diffusion_sample_batch",
            "threads",
        )
    }
    load_start, start = os.getloadavg(), time.perf_counter()
    models: dict[str, dict] = {}
    for name in args.sections:
        if args.in_process:
            models[name] = run_section(name, opts)
            continue
        # one fresh process per model: its peak RSS is that model's alone
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            models[name] = pool.submit(run_section, name, opts).result()
    runtime = time.perf_counter() - start
    device = torch.device(args.device)
    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": args.threads or torch.get_num_threads(),
        "cpus": os.cpu_count(),
        # other work shares this machine: absolute times move with it, FLOPs do not
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
    }
    projections = project(models)
    report = {
        "machine": machine,
        "settings": {**opts, "answer_codes": ANSWER_CODES, "max_new_tokens": MAX_NEW_TOKENS, "frames": FRAMES},
        "flops_measure": "torch.utils.flop_counter.FlopCounterMode over one full call (forward and backward where "
        "the step has one): matmul, bmm, convolution and attention FLOPs; the optimiser's elementwise work is "
        "not counted",
        "models": models,
        "projections": projections,
        "runtime_s": runtime,
    }
    print(f"\n{'model':<8} {'parameters':>12} {'peak RSS MiB':>13}")
    for name, m in models.items():
        print(f"{name:<8} {m['parameters']:>12,} {m['memory']['peak_mib']:>13.0f}")
    print(f"\nruntime {runtime:.0f} s\n")
    markdown = projection_markdown(projections, machine) + "\n" + measurement_markdown(models, machine)
    print(markdown)
    write_json(args.out, report)
    if args.readme is not None:
        args.readme.write_text(markdown)
    return report


if __name__ == "__main__":
    main()
