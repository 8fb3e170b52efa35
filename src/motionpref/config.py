"""Typed view of ``params.yaml``, parsed and validated once by the stage or command that runs.

``params.yaml`` holds the base values (the CPU demo) plus a ``profiles`` table of overrides; the top-level
``profile`` key picks one (``dvc exp run -S profile=smoke`` makes every stage tiny). Every profile is merged into
the base and validated, selected or not, so an error always names the full key path a user can fix
(``profiles.smoke.data.n_clips`` for a profile's).

Defaults have one source: every field's default is the value the committed ``params.yaml`` gives it, so a key or
a whole section left out of a params file (or of a mapping a test builds) means what the committed file says,
and tests/test_config.py checks that leaving out any key, or all of them, parses to the committed values.
Requiring every section in a file instead would break each partial mapping the stage tests build and still leave
the class defaults a second, differing source for code that builds sections directly. The papers' sizes live in
the ``paper`` profile and in ``VQVAEConfig.real()`` / ``EvaluatorConfig.t2m()``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """params.yaml is unreadable or does not describe a valid run (the message names the key path)."""


class Section(BaseModel):
    # YAML reads .inf and .nan as floats, which pass a lower bound (inf) or an unbounded field; no setting means either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _onto_default_sections(cls, data: Any) -> Any:
        # A section given in part is merged onto its field's default, as a profile onto the base, so that
        # pairs: {sampling: {top_k: 5}} keeps the pairs' temperature 1.2 instead of SamplingConfig's 1.0.
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            default = field.default
            if isinstance(default, Section) and default.model_fields_set and isinstance(data.get(name), dict):
                merged[name] = _deep_merge(default.model_dump(include=default.model_fields_set), data[name])
        return merged


S = TypeVar("S", bound=Section)


class SplitFractions(Section):
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.05, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class DataConfig(Section):
    source: Literal["synthetic", "humanml3d", "kit"] = "synthetic"
    root: Path | None = None  # a real HumanML3D / KIT-ML folder, for source humanml3d | kit
    format: Literal["humanml3d", "kit"] = "humanml3d"  # the layout the synthetic world is written in
    n_clips: int = Field(3000, ge=4)
    n_novel: int = Field(600, ge=0)
    n_captions: int = Field(3, ge=1, le=10)
    mirror: bool = True
    split: SplitFractions = SplitFractions()
    min_len: int = Field(40, ge=4)
    max_len: int = Field(196, ge=8)
    workers: int = Field(2, ge=1, le=64)
    judge_clips_per_primitive: int = Field(20, ge=1)
    cmu_dir: Path = Path("tests/fixtures/cmu")  # real mocap shown beside the synthetic world

    @property
    def skeleton_name(self) -> str:
        return "kit" if "kit" in (self.source, self.format) else "humanml3d"

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source != "synthetic" and self.root is None:
            raise ValueError(f"data.root: source {self.source!r} needs the path of the dataset folder")
        if self.source != "synthetic" and self.format != "humanml3d":
            raise ValueError(
                f"data.format: {self.format!r} picks the synthetic world's layout, so it needs source synthetic; "
                f"a {self.source!r} folder is read in its own layout (leave data.format humanml3d)"
            )
        if self.min_len >= self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must be below max_len ({self.max_len})")
        return self


# ---- model sizes and optimisation: the library takes these objects directly -------------------------------


class VQVAEConfig(Section):
    """Sizes of the motion VQ-VAE (MotionGPT / T2M-GPT design); defaults are the CPU profile's."""

    feature_dim: int = Field(263, ge=5)
    nb_code: int = Field(256, ge=2)
    code_dim: int = Field(128, ge=1)  # also the encoder's output width (T2M-GPT's output_emb_width)
    width: int = Field(128, ge=1)
    depth: int = Field(2, ge=1)  # residual blocks per resolution; dilations growth ** 0 .. ** (depth - 1)
    down_t: int = Field(2, ge=1)  # stride-2 downsamplings: 4x fewer codes than frames
    stride_t: int = Field(2, ge=2, multiple_of=2)  # even: kernel 2*stride, padding stride/2
    dilation_growth_rate: int = Field(3, ge=1)
    activation: Literal["relu", "silu", "gelu"] = "relu"
    mu: float = Field(0.99, gt=0, lt=1)  # EMA decay of the codebook

    @classmethod
    def real(cls, feature_dim: int = 263) -> VQVAEConfig:
        """MotionGPT's VQ-VAE: 512 codes of 512 dims, width 512, depth 3, 4x downsampling."""
        return cls(feature_dim=feature_dim, nb_code=512, code_dim=512, width=512, depth=3, down_t=2)

    @property
    def downsample(self) -> int:
        return self.stride_t**self.down_t


class VQVAETrainConfig(Section):
    """Optimisation of the VQ-VAE; the CPU default trains fewer steps, higher lr than T2M-GPT (``real``)."""

    steps: int = Field(1500, ge=1)
    warmup_steps: int = Field(100, ge=0)
    batch_size: int = Field(32, ge=1)
    window: int = Field(64, ge=4)  # frames per training window (T2M-GPT: 64)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_milestones: tuple[int, ...] = (1000,)  # steps after warm-up at which the lr is multiplied by gamma
    gamma: float = Field(0.05, gt=0)
    commit: float = Field(0.02, ge=0)
    vel: float = Field(0.5, ge=0)
    log_every: int = Field(50, ge=1)

    @classmethod
    def real(cls) -> VQVAETrainConfig:
        """T2M-GPT's README command for HumanML3D (as MotionGPT's VQ stage)."""
        return cls(steps=300_000, warmup_steps=1000, batch_size=256, lr=2e-4, lr_milestones=(200_000,))


class EvaluatorConfig(Section):
    """Sizes of the Guo et al. 2022 evaluator: defaults for the CPU profile, ``t2m()`` the published model."""

    feature_dim: int = Field(263, ge=5)  # must exceed the 4 contact channels the movement encoder drops
    dim_word: int = Field(64, ge=1)
    dim_pos_ohot: int = Field(15, ge=1)
    dim_text_hidden: int = Field(128, ge=1)
    dim_coemb_hidden: int = Field(128, ge=1)  # size of both embeddings
    dim_movement_enc_hidden: int = Field(128, ge=1)
    dim_movement_latent: int = Field(128, ge=1)
    dim_motion_hidden: int = Field(256, ge=1)
    unit_length: Literal[4] = 4  # the movement encoder's two stride-2 convolutions fix 4 frames a unit
    max_text_len: int = Field(20, ge=1)
    max_motion_length: int = Field(196, ge=4, multiple_of=4)  # clips are padded to this, longer ones cut
    word_vectors: Literal["learned", "glove"] = "learned"  # trained here, or the published frozen GloVe

    @classmethod
    def t2m(cls, feature_dim: int = 263) -> EvaluatorConfig:
        """The published evaluator: ``evaluator_wrapper.py`` and ``opt.txt`` of text-to-motion."""
        return cls(
            feature_dim=feature_dim,
            dim_word=300,
            dim_text_hidden=512,
            dim_coemb_hidden=512,
            dim_movement_enc_hidden=512,
            dim_movement_latent=512,
            dim_motion_hidden=1024,
            word_vectors="glove",
        )


class EvaluatorTrainConfig(Section):
    """Optimisation of the evaluator. The original's: lr 1e-4, margin 10, clip 0.5, batch 32, 24-frame
    windows, lambda 0.001; the CPU profile trains fewer steps at a higher lr."""

    batch_size: int = Field(32, ge=2)  # negatives are the other pairs of the batch
    decomp_steps: int = Field(300, ge=0)
    decomp_window: int = Field(24, ge=4, multiple_of=4)
    decomp_lr: float = Field(1e-3, gt=0)
    lambda_sparsity: float = Field(0.001, ge=0)
    lambda_smooth: float = Field(0.001, ge=0)
    match_steps: int = Field(1000, ge=0)
    lr: float = Field(1e-3, gt=0)
    margin: float = Field(10.0, gt=0)
    grad_clip: float = Field(0.5, gt=0)
    min_word_count: int = Field(1, ge=1)
    eval_every: int = Field(200, ge=1)  # validation loss every this many matching steps; the best is kept
    log_every: int = Field(50, ge=1)


class EvalSizes(Section):
    """Sizes of the Guo et al. 2022 protocol. The defaults are the CPU demo's; the paper's (profile paper) are 20
    replications and MultiModality over 100 texts x 30 samples x 10 pairs."""

    replications: int = Field(10, ge=1)
    r_precision_batch: int = Field(32, ge=2)
    top_k: int = Field(3, ge=1)
    diversity_times: int = Field(300, ge=1)
    mm_num_samples: int = Field(50, ge=0)  # texts with repeated generations; 0 skips MultiModality
    mm_num_repeats: int = Field(10, ge=2)
    mm_times: int = Field(5, ge=1)
    unit_length: int = Field(4, ge=1)
    embed_batch: int = Field(32, ge=1)
    generate_batch: int = Field(256, ge=1)  # captions handed to the model's sampler at once

    @model_validator(mode="after")
    def _check(self) -> EvalSizes:
        if self.top_k > self.r_precision_batch:
            raise ValueError(f"top_k ({self.top_k}) exceeds r_precision_batch ({self.r_precision_batch})")
        if self.mm_num_samples and self.mm_num_repeats <= self.mm_times:
            raise ValueError(f"mm_num_repeats ({self.mm_num_repeats}) must exceed mm_times ({self.mm_times})")
        return self


class PolicyConfig(Section):
    """Sizes of a policy built from scratch. ``num_layers`` is per stack for T5 (encoder and decoder each)
    and the decoder depth for ``arch: causal``; ``max_positions`` only bounds the causal model."""

    arch: Literal["t5", "causal"] = "t5"
    codebook_size: int = Field(512, ge=2)
    d_model: int = Field(128, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    d_ff: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    min_word_frequency: int = Field(1, ge=1)
    max_positions: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _heads(self) -> PolicyConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self


class PolicyTrainConfig(Section):
    """Supervised text-to-motion training. AdamW betas are MotionGPT's (0.9, 0.99); the lr is above its 2e-4
    because the CPU default trains a tiny model from scratch, not flan-t5."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_batch_size: int = Field(64, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop early after this many optimiser steps (quick runs)


class RetrievalConfig(Section):
    """Sizes of the TMR-style retrieval model (the motion feature size comes from the dataset statistics)."""

    latent_dim: int = Field(128, ge=1)  # width of both transformers and of the joint embedding space
    ff_dim: int = Field(256, ge=1)
    n_layers: int = Field(2, ge=1)  # per encoder
    n_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_words: int = Field(48, ge=1)  # longer captions are truncated
    # Consecutive frames concatenated into one motion token. TMR uses 1; 4 (the VQ-VAE's downsampling)
    # makes a training step on 196-frame clips ~3x cheaper, which the CPU profile needs.
    frames_per_token: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _heads(self) -> RetrievalConfig:
        if self.latent_dim % self.n_heads:
            raise ValueError(f"latent_dim ({self.latent_dim}) must be divisible by n_heads ({self.n_heads})")
        return self


class RetrievalTrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(0.1, gt=0)  # TMR's value
    filter_threshold: float = Field(0.8, gt=0)  # TF-IDF cosine above which captions are not negatives
    min_crop: float = Field(0.8, gt=0, le=1)  # a training crop keeps this fraction of the clip or more
    max_frames: int = Field(196, ge=4)  # crops (and validation motions) are at most this long
    word_dropout: float = Field(0.1, ge=0, lt=1)  # chance a word becomes [UNK], so unseen words are expected
    grad_clip: float = Field(1.0, gt=0)
    val_batch_size: int = Field(32, ge=2)  # recall is ranked within batches of this many, as T2M R-precision


def section_from_file(cls: type[S], data: Any, where: str) -> S:
    """A config section stored beside a model (``config.json``), with errors naming the file and key."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None


# ---- the stages' sections --------------------------------------------------------------------------------


class VQVAESection(Section):
    model: VQVAEConfig = VQVAEConfig()  # feature_dim comes from the dataset, not from here
    train: VQVAETrainConfig = VQVAETrainConfig()


class EvaluatorSection(Section):
    init: Literal["scratch", "t2m"] = "scratch"  # train here, or load the published T2M evaluator
    checkpoints_dir: Path | None = None  # for t2m: the folder holding t2m/text_mot_match/model/finest.tar
    glove_dir: Path | None = None  # for t2m: the folder holding our_vab_data.npy, our_vab_words.pkl, ...
    model: EvaluatorConfig = EvaluatorConfig()
    train: EvaluatorTrainConfig = EvaluatorTrainConfig()

    @model_validator(mode="after")
    def _paths(self) -> EvaluatorSection:
        if self.init == "t2m" and (self.checkpoints_dir is None or self.glove_dir is None):
            raise ValueError("init t2m needs checkpoints_dir and glove_dir")
        return self


class RetrievalSection(Section):
    model: RetrievalConfig = RetrievalConfig()
    train: RetrievalTrainConfig = RetrievalTrainConfig()


class PolicySection(Section):
    init: Literal["scratch", "motiongpt"] = "scratch"  # train a tiny model here, or load MotionGPT
    checkpoint: Path | None = None  # for motiongpt: the checkpoint holding lm.language_model.* and vae.*
    t5_dir: Path | None = None  # for motiongpt: the flan-t5 folder (config and tokenizer files)
    model: PolicyConfig = PolicyConfig()  # codebook_size comes from the VQ-VAE, not from here
    train: PolicyTrainConfig = PolicyTrainConfig()

    @model_validator(mode="after")
    def _paths(self) -> PolicySection:
        if self.init == "motiongpt" and (self.checkpoint is None or self.t5_dir is None):
            raise ValueError("init motiongpt needs checkpoint and t5_dir")
        return self


class SamplingConfig(Section):
    """How a policy samples motions: the one shape every sampler takes (evaluation, pairs, win rates, the online
    samples of SoPo and PPO), always through ``models.generator.MotionGenerator``."""

    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=3)  # start + codes + end; 196 frames are 49 codes
    batch_size: int = Field(64, ge=1)
    retries: int = Field(2, ge=0)  # resample an invalid generation (no motion tokens) with a new seed
    constrained: bool = True  # decode only what a motion can hold (start, codes, end); see MotionPolicy.sample


class EvaluateSection(Section):
    sizes: EvalSizes = EvalSizes()
    sampling: SamplingConfig = SamplingConfig()
    judge_texts: int = Field(300, ge=0)  # test captions whose samples the synthetic judge scores


DegreeName = Literal["much_better", "better", "slightly_better", "negligible"]
GapName = Literal["much_better", "better", "slightly_better"]  # below the smallest gap a pair is "negligible"


def _strongest_first(degrees: tuple[str, ...]) -> AfterValidator:
    """Checks a degree -> value table has every degree and a stronger degree never a smaller value."""

    def check(values: dict[str, float]) -> dict[str, float]:
        missing = [d for d in degrees if d not in values]
        if missing:
            raise ValueError(f"needs a value for {missing}")
        for stronger, weaker in pairwise(degrees):
            if values[stronger] < values[weaker]:
                raise ValueError(f"{stronger} ({values[stronger]:g}) must be at least {weaker} ({values[weaker]:g})")
        return values

    return AfterValidator(check)


Gaps = Annotated[
    dict[GapName, Annotated[float, Field(ge=0)]], _strongest_first(("much_better", "better", "slightly_better"))
]
Margins = Annotated[
    dict[DegreeName, Annotated[float, Field(ge=0)]],
    _strongest_first(("much_better", "better", "slightly_better", "negligible")),
]


class LLMEndpoint(Section):
    """An OpenAI-compatible chat-completions server: ``POST {base_url}/chat/completions``."""

    base_url: str = Field(pattern=r"^https?://")  # e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama)
    model: str = Field(min_length=1)
    api_key_env: str | None = None  # name of the environment variable holding the key; never the key itself
    temperature: float = Field(1.0, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    batch_size: int = Field(20, ge=1)  # descriptions asked for per request
    n_examples: int = Field(8, ge=1)  # training captions shown per request as the style to follow

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


class PromptsConfig(Section):
    # backend -> prompts; 0 leaves a backend out, so an ablation can switch one off without deleting its key
    counts: dict[Literal["synthetic", "familiar", "recombine", "llm"], Annotated[int, Field(ge=0)]] = {
        "synthetic": 3000
    }
    near_threshold: float = Field(0.9, gt=0, le=1)  # TF-IDF cosine at which a prompt near-duplicates a caption
    max_candidates_factor: float = Field(4.0, ge=1)
    reference_splits: list[str] = ["train", "val", "test"]
    example_split: str = "train"
    min_count: int = Field(2, ge=1)  # recombine: how often a slot filler must occur in the captions
    llm: LLMEndpoint | None = None  # set base_url and model to use the llm backend
    # programs (a prompt without one is its own program) split before any sampling: pairs and preferences come
    # from train and val programs, the win rates from test programs only, so no task is seen in two splits
    split: SplitFractions = SplitFractions(train=0.8, val=0.1, test=0.1)

    @field_validator("counts")
    @classmethod
    def _some_prompts(cls, counts: dict[str, int]) -> dict[str, int]:
        if not sum(counts.values()):
            raise ValueError(f"asks for no prompts ({counts}); give a backend a count of 1 or more")
        return counts

    @model_validator(mode="after")
    def _llm_endpoint(self) -> PromptsConfig:
        if self.counts.get("llm") and self.llm is None:
            raise ValueError(f"llm: counts.llm asks for {self.counts['llm']} prompts; set llm's base_url and model")
        return self


class PairsConfig(Section):
    sampling: SamplingConfig = SamplingConfig(temperature=1.2)  # the paper samples both motions at 1.2
    previews: int = Field(8, ge=0)  # side-by-side GIFs rendered now; the labeling app renders the rest on demand


class SimulatedLabelersConfig(Section):
    """Labelers that see the synthetic judge's score through their own noise (the embedded default)."""

    n_labelers: int = Field(4, ge=1)
    noise: float = Field(0.08, ge=0)  # std of a labeler's error on each quality it perceives
    shared_fraction: float = Field(0.15, ge=0, le=1)  # pairs a second labeler also judges (for agreement)
    fail_below: float = Field(0.33, ge=0, le=1)  # a motion perceived below this fails the prompt
    realism_min: float = Field(0.5, ge=0, le=1)  # a motion less realistic than this fails whatever it does
    # the smallest perceived quality gap for each degree; smaller gaps are "negligible"
    gaps: Gaps = {"much_better": 0.35, "better": 0.17, "slightly_better": 0.035}


class AIFeedbackConfig(Section):
    """The retrieval scorer ranking the two motions (MoDiPO-style AI feedback; works on real data)."""

    fail_below: float = Field(0.5, ge=0, le=1)  # both scores below: skip
    gaps: Gaps = {"much_better": 0.1, "better": 0.05, "slightly_better": 0.02}


class LabelsConfig(Section):
    labeler: Literal["simulated", "ai"] = "simulated"  # who the label stage asks; humans use the app
    # label@<policy> asks labeler_for[policy] instead: the synthetic judge fails every sample of the CPU MDM
    # (realism 0), so its labelers skip every MDM pair and AI feedback labels them
    labeler_for: dict[Literal["sft", "mdm"], Literal["simulated", "ai"]] = {"mdm": "ai"}
    simulated: SimulatedLabelersConfig = SimulatedLabelersConfig()
    ai: AIFeedbackConfig = AIFeedbackConfig()

    def for_policy(self, policy: str) -> LabelsConfig:
        """This config with the labeler that labels ``policy``'s pairs."""
        return self.model_copy(update={"labeler": self.labeler_for.get(policy, self.labeler)})


class IngestConfig(Section):
    pairs: Path = Path("data/prefs/pairs.parquet")  # the pairs the judgments refer to
    labels_dir: Path = Path("data/prefs/labels")  # every *.jsonl below it is read (never written)
    rule: Literal["last_wins", "majority", "drop_conflicts"] = "last_wins"
    on_error: Literal["fail", "quarantine"] = "fail"
    margins: Margins = {"much_better": 3, "better": 2, "slightly_better": 1, "negligible": 0}


class RewardTrainConfig(Section):
    """Bradley-Terry reward modelling with trl's RewardTrainer (the paper: margin by degree, 10% held out)."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    use_margin: bool = True  # subtract the degree's margin inside the sigmoid (Llama 2's margin loss)
    center_rewards_coefficient: float | None = Field(None, ge=0)
    max_length: int = Field(512, ge=8)  # prompt + motion tokens


class RewardSection(Section):
    train: RewardTrainConfig = RewardTrainConfig()
    # the reward model's seed replicate (suite instructmotion_reward_curves); 0 is the model every run trains
    seed: int = Field(0, ge=0)

    def stage_key(self) -> str:
        """The name train_reward's seed is derived from; replicate 0 keeps the stage's own, so adding replicates
        changed no earlier output."""
        return "train_reward" if self.seed == 0 else f"train_reward:{self.seed}"


class LoraConfig(Section):
    """LoRA adapters (peft); off means full finetuning. The paper: r 8, alpha 16, dropout 0.05."""

    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # null: peft's defaults for the architecture (T5: q, v)


class PreferenceFilter(Section):
    """Which preferences train: by degree and by fraction of the data (the paper's data ablations)."""

    degrees: Literal["all", "much_better", "better", "slightly_better", "all_better"] = "all"
    include_negligible: bool = True  # also keep "negligible" pairs (only with degrees all / all_better)
    fraction: float = Field(1.0, gt=0, le=1)  # seeded subset of the training pairs


class DPOConfig(Section):
    """Offline preference optimisation on the labelled pairs (Rafailov et al. 2023 and its variants)."""

    loss: Literal["sigmoid", "ipo", "hinge", "kto"] = "ipo"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # conservative DPO (sigmoid only)
    sft_weight: float = Field(0.0, ge=0)  # RPO: weight of the chosen answers' NLL added to the loss; 0 = off
    epochs: int = Field(3, ge=1)  # the paper's 20 (profile paper) overfit the tiny CPU policy
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    data: PreferenceFilter = PreferenceFilter()
    ipo_form: Literal["mean", "sum"] = "mean"  # IPO on mean per-token log-probs (trl 0.8, the paper) or summed
    # which epoch's weights are kept: the evaluator's R@1 on the val split (the paper), or the preference val loss
    select_by: Literal["val_metric", "val_loss", "val_accuracy"] = "val_metric"
    val_sizes: EvalSizes = EvalSizes(replications=1, diversity_times=10, mm_num_samples=0)  # select_by val_metric
    val_sampling: SamplingConfig = SamplingConfig(retries=0)  # select_by val_metric: first samples, as evaluate


class SoPoConfig(Section):
    """Semi-online preference optimisation (SoPo): dataset motion preferred, the worst of K online samples
    unpreferred when the retrieval scorer rates it below ``tau``."""

    variant: Literal["dsopo", "usopo", "sopo_no_vu", "sopo"] = "sopo"
    k: int = Field(4, ge=1)  # online samples per caption
    # an unpreferred sample must score below this to be "valuable"; the paper's 0.45 (profile paper) is on TMR's
    # scale, this is the same rule on our scorer's (bench/sopo_tau.py, see params.yaml)
    tau: float = Field(0.48, ge=0, le=1)
    beta: float = Field(1.0, gt=0)  # SoPo's own beta (the paper's 1), not the DPO family's algo.beta
    c: float = Field(2.0, gt=0)  # beta_w = beta * (c - S(x_w))
    # S(x_w), a score cos/2 + 0.5 of the dataset motion to the online samples: Eq. 14's min over them, or the max
    s_w: Literal["min", "max"] = "min"
    sampling: SamplingConfig = SamplingConfig()  # of the online samples
    epochs: int = Field(1, ge=1)
    captions_per_epoch: int | None = Field(1280, ge=1)  # a seeded subset of the training clips per epoch
    batch_size: int = Field(16, ge=1)  # captions per step (K samples each)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class PPOConfig(Section):
    """RLHF with PPO against the reward model, as the paper ran it (trl's PPO recipe: no dropout, NEFTune 0.1,
    fixed KL 0.05, batch 32, lr 1e-5, full finetuning; profile ``paper``). The CPU default keeps all of that but
    size, lr and LoRA: 6 steps of 2 x 16-sample updates fit the demo's ~3 minutes, and in 6 steps lr 1e-5 barely
    moves the policy, so LoRA at 5e-4 (``bench/ppo_sweep.py``, ``reports/bench/ppo_sweep.json``)."""

    steps: int = Field(6, ge=1)  # PPO iterations (one rollout batch each)
    batch_size: int = Field(32, ge=1)  # prompts per rollout
    mini_batch_size: int = Field(16, ge=1)
    ppo_epochs: int = Field(2, ge=1)
    lr: float = Field(5e-4, gt=0)
    lora: bool = True  # train algo.lora's adapters (when enabled; their dropout off) rather than the whole policy
    kl_coef: float = Field(0.05, ge=0)  # fixed per-token KL penalty to the reference
    whiten_rewards: bool = True
    score_scale: float = Field(1.0, gt=0)
    score_clip: float | None = Field(None, gt=0)
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    neftune_alpha: float | None = Field(0.1, gt=0)  # NEFTune embedding noise; null turns it off
    # PPO does not resample an invalid rollout (it is dropped and counted), as the paper's trl recipe
    sampling: SamplingConfig = SamplingConfig(retries=0)
    grad_clip: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _sampled_distribution(self) -> PPOConfig:
        # the importance ratios and the KL are computed under temperature and the motion grammar only
        s = self.sampling
        for key, bad in (("top_k", s.top_k is not None), ("top_p", s.top_p is not None)):
            if bad:
                raise ValueError(f"sampling.{key}: PPO's log-probabilities assume no {key} truncation; set it null")
        if not s.constrained:
            raise ValueError("sampling.constrained: PPO samples under the motion grammar; set it true")
        return self


# ---- diffusion policies (MDM, MLD): train_diffusion@<family>, finetune@<family>_<algorithm> ----------------


class TextEncoderConfig(Section):
    """The text condition of a diffusion policy: a small word-level transformer trained with the policy
    (``words``), or a frozen CLIP text tower read from a local folder (``clip``), whose projected pooled output
    both MDM (ViT-B/32, 512-d) and MLD (ViT-L/14, 768-d) condition on."""

    kind: Literal["words", "clip"] = "words"
    clip_dir: Path | None = None  # for clip: a transformers CLIP folder (config, weights, tokenizer files)
    # clip: tokens with start and end; MDM cuts HumanML3D captions to 20 + 2 (22), MLD keeps CLIP's 77
    max_length: int = Field(77, ge=3)
    width: int = Field(64, ge=2, multiple_of=2)  # words: also the size of the embedding it returns
    num_layers: int = Field(1, ge=1)  # words
    num_heads: int = Field(4, ge=1)  # words
    ff_size: int = Field(128, ge=1)  # words
    dropout: float = Field(0.1, ge=0, lt=1)  # words
    max_words: int = Field(48, ge=1)  # words: longer captions are cut
    min_count: int = Field(1, ge=1)  # words: rarer caption words become [UNK]

    @classmethod
    def mdm_clip(cls, clip_dir: Path) -> TextEncoderConfig:
        """MDM's text condition: CLIP ViT-B/32, HumanML3D captions cut to 20 tokens (``clip_encode_text``)."""
        return cls(kind="clip", clip_dir=clip_dir, max_length=22)

    @classmethod
    def mld_clip(cls, clip_dir: Path) -> TextEncoderConfig:
        """MLD's text condition: CLIP ViT-L/14 (``deps/clip-vit-large-patch14``), the tokenizer's 77 tokens."""
        return cls(kind="clip", clip_dir=clip_dir, max_length=77)

    @model_validator(mode="after")
    def _check(self) -> TextEncoderConfig:
        if self.kind == "clip" and self.clip_dir is None:
            raise ValueError("kind clip needs clip_dir, the folder of a transformers CLIP model")
        if self.width % self.num_heads:
            raise ValueError(f"width ({self.width}) must be divisible by num_heads ({self.num_heads})")
        return self


class MDMConfig(Section):
    """MDM's ``trans_enc`` denoiser (Tevet et al. 2023) on normalised HumanML3D (263) or KIT (251) features.
    Defaults are a tiny CPU model; ``real()`` is the published size."""

    feature_dim: int = Field(263, ge=1)  # MDM's njoints (with nfeats 1)
    latent_dim: int = Field(64, ge=2, multiple_of=2)  # even: the sinusoidal table interleaves sin and cos
    ff_size: int = Field(128, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    activation: Literal["gelu", "relu"] = "gelu"
    clip_dim: int = Field(64, ge=1)  # size of the text embedding: the text encoder's (CLIP ViT-B/32: 512)
    cond_mask_prob: float = Field(0.1, ge=0, lt=1)  # chance a training sample's text is dropped (for guidance)
    mask_frames: bool = True  # attend only to valid frames (MDM's --mask_frames fix; its 50-step model has it)
    diffusion_steps: int = Field(1000, ge=2)
    pos_embed_max_len: int = Field(5000, ge=2)  # one table for frame positions and timesteps

    @classmethod
    def real(cls, feature_dim: int = 263, diffusion_steps: int = 50) -> MDMConfig:
        """MDM's ``get_model_args`` for HumanML3D: latent 512, ff 1024, 8 layers, 4 heads, CLIP ViT-B/32. The
        default is the 50-step model SoPo finetunes (trained with ``--diffusion_steps 50 --mask_frames``); the
        original release is ``diffusion_steps=1000`` with ``mask_frames=False``."""
        return cls(
            feature_dim=feature_dim,
            latent_dim=512,
            ff_size=1024,
            num_layers=8,
            num_heads=4,
            clip_dim=512,
            diffusion_steps=diffusion_steps,
        )

    @model_validator(mode="after")
    def _check(self) -> MDMConfig:
        if self.latent_dim % self.num_heads:
            raise ValueError(f"latent_dim ({self.latent_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.pos_embed_max_len < self.diffusion_steps:
            raise ValueError(
                f"pos_embed_max_len ({self.pos_embed_max_len}) must cover diffusion_steps ({self.diffusion_steps}): "
                "MDM embeds a timestep by its row of the position table"
            )
        return self


class MLDConfig(Section):
    """MLD (Chen et al. 2023): a transformer motion VAE and a latent denoiser, both with MLD's long skip
    connections (so an odd number of layers). Defaults are a tiny CPU model; ``real()`` is the published one."""

    feature_dim: int = Field(263, ge=1)
    latent_size: int = Field(1, ge=1)  # latent tokens (MLD's latent_dim[0])
    latent_dim: int = Field(64, ge=1)  # width of a latent token and of both transformers (latent_dim[-1])
    vae_ff_size: int = Field(128, ge=1)
    vae_num_layers: int = Field(1, ge=1)
    denoiser_ff_size: int = Field(128, ge=1)
    denoiser_num_layers: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    vae_dropout: float = Field(0.1, ge=0, lt=1)
    denoiser_dropout: float = Field(0.1, ge=0, lt=1)
    activation: Literal["gelu", "relu"] = "gelu"
    text_encoded_dim: int = Field(64, ge=1)  # size of the text embedding (CLIP ViT-L/14: 768)
    guidance_uncondp: float = Field(0.1, ge=0, lt=1)  # chance a training caption becomes "" (for guidance)
    diffusion_steps: int = Field(1000, ge=2)
    lambda_kl: float = Field(1e-4, ge=0)  # VAE stage: KL weight against the feature reconstruction
    max_positions: int = Field(500, ge=2)  # rows of the learned position tables: frames + 2 x latent_size

    @classmethod
    def real(cls, feature_dim: int = 263) -> MLDConfig:
        """``config_mld_humanml3d.yaml``: latent 1 x 256, ff 1024, 9 layers, 4 heads, CLIP ViT-L/14 (768)."""
        return cls(
            feature_dim=feature_dim,
            latent_size=1,
            latent_dim=256,
            vae_ff_size=1024,
            vae_num_layers=9,
            denoiser_ff_size=1024,
            denoiser_num_layers=9,
            num_heads=4,
            text_encoded_dim=768,
        )

    @model_validator(mode="after")
    def _check(self) -> MLDConfig:
        if self.latent_dim % self.num_heads:
            raise ValueError(f"latent_dim ({self.latent_dim}) must be divisible by num_heads ({self.num_heads})")
        for name in ("vae_num_layers", "denoiser_num_layers"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be odd: MLD pairs layers around a middle one")
        return self


class DiffusionSamplingConfig(Section):
    """DDIM sampling with classifier-free guidance ``uncond + guidance * (cond - uncond)`` (1: no guidance)."""

    steps: int = Field(50, ge=1)
    guidance: float = Field(2.5, ge=0)
    eta: float = Field(0.0, ge=0, le=1)  # 0: deterministic DDIM; 1 over every training step: DDPM's sampler

    @classmethod
    def mdm(cls) -> DiffusionSamplingConfig:
        """MDM's sampler for its 50-step model: ancestral DDPM over all 50 steps, which is DDIM with eta 1
        there, and guidance 2.5 (``--guidance_param``)."""
        return cls(steps=50, guidance=2.5, eta=1.0)

    @classmethod
    def mld(cls) -> DiffusionSamplingConfig:
        """MLD's ``scheduler.yaml``: 50 DDIM steps, eta 0, guidance 7.5."""
        return cls(steps=50, guidance=7.5, eta=0.0)


class DiffusionTrainConfig(Section):
    """Training a diffusion policy (or MLD's VAE) from scratch: AdamW on batches of random training clips, at a
    constant learning rate (as MDM and MLD) or one decayed to 0 over the steps (``linear`` | ``cosine``)."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)  # MDM and MLD train their 512 / 256-wide models at 1e-4
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    log_every: int = Field(50, ge=1)


def check_sampling_steps(steps: int, diffusion_steps: int) -> None:
    """DDIM's evenly spaced timesteps (diffusers' "leading" spacing, MDM's ``ddimN`` respacing) start near the
    last training step only when ``steps`` divides ``diffusion_steps``: 30 of 50 would start from noise at t 29,
    a sample from the wrong noise level (MDM's ``space_timesteps`` refuses it too)."""
    if steps > diffusion_steps or diffusion_steps % steps:
        raise ValueError(f"{steps} sampling steps must divide the {diffusion_steps} training steps")


class MDMSection(Section):
    """``train_diffusion@mdm``: train the MDM-style policy here (``scratch``) or load MDM's ``model*.pt``
    (``mdm``, with ``text`` a CLIP folder and ``model`` MDM's sizes)."""

    init: Literal["scratch", "mdm"] = "scratch"
    checkpoint: Path | None = None  # for mdm: the model*.pt file
    text: TextEncoderConfig = TextEncoderConfig()
    model: MDMConfig = MDMConfig(diffusion_steps=50)  # the 50-step MDM that SoPo finetunes
    # a CPU-sized MDM: 6,000 steps decayed to 0 and MLD's guidance 7.5 (what they reach: params.yaml)
    train: DiffusionTrainConfig = DiffusionTrainConfig(steps=6000, lr_schedule="cosine")
    sampling: DiffusionSamplingConfig = DiffusionSamplingConfig(steps=10, guidance=7.5, eta=0.0)

    @model_validator(mode="after")
    def _check(self) -> MDMSection:
        if self.init == "mdm" and (self.checkpoint is None or self.text.kind != "clip"):
            raise ValueError("init mdm needs checkpoint (MDM's model*.pt) and text.kind clip with text.clip_dir")
        check_sampling_steps(self.sampling.steps, self.model.diffusion_steps)
        return self


class MLDSection(Section):
    """``train_diffusion@mld``: MLD's two stages here (the VAE, then the latent denoiser), or MLD's Lightning
    checkpoint (``mld``, with ``text`` a CLIP folder and ``model`` MLD's sizes)."""

    init: Literal["scratch", "mld"] = "scratch"
    checkpoint: Path | None = None  # for mld: the Lightning .ckpt with vae.* and denoiser.*
    text: TextEncoderConfig = TextEncoderConfig()
    model: MLDConfig = MLDConfig(denoiser_dropout=0.0)  # a CPU-sized denoiser underfits: dropout only slows it
    vae_train: DiffusionTrainConfig = DiffusionTrainConfig(steps=1500)
    train: DiffusionTrainConfig = DiffusionTrainConfig(steps=15000)
    sampling: DiffusionSamplingConfig = DiffusionSamplingConfig(steps=10, guidance=7.5, eta=0.0)

    @model_validator(mode="after")
    def _check(self) -> MLDSection:
        if self.init == "mld" and (self.checkpoint is None or self.text.kind != "clip"):
            raise ValueError("init mld needs checkpoint (MLD's .ckpt) and text.kind clip with text.clip_dir")
        check_sampling_steps(self.sampling.steps, self.model.diffusion_steps)
        return self


class DiffusionSection(Section):
    mdm: MDMSection = MDMSection()
    mld: MLDSection = MLDSection()


class DiffusionSoPoConfig(Section):
    """SoPo on a diffusion policy (Tan et al. 2024, Eq. 15-16); the token policy's is ``algo.sopo``."""

    variant: Literal["dsopo", "usopo", "sopo_no_vu", "sopo"] = "sopo"
    k: dict[Literal["mdm", "mld"], Annotated[int, Field(ge=1)]] = {"mdm": 4, "mld": 2}  # online samples / caption
    tau: float = Field(0.48, ge=0, le=1)
    beta: float = Field(1.0, gt=0)
    c: float = Field(2.0, gt=0)
    s_w: Literal["min", "max"] = "min"


class MoDiPOConfig(Section):
    """MoDiPO (Pappa et al. 2024): K samples per training caption ranked by the retrieval scorer, best against
    worst, then Diffusion-DPO; offline (pairs from the pretrained policy once) or online (``<family>_modipo_online``:
    pairs from the current policy every epoch)."""

    k: int = Field(4, ge=2)
    epochs: int = Field(2, ge=1)


class DiffusionDPOConfig(Section):
    """Diffusion-DPO on labelled pairs of diffusion samples (``finetune@mdm_dpo``: ``ingest_labels@mdm``'s
    training split, every pair each epoch)."""

    epochs: int = Field(1, ge=1)


class DiffusionAlgoConfig(Section):
    """Preference finetuning of the diffusion policies: ``finetune@<mdm|mld>_<sopo|modipo|modipo_online>`` and
    ``finetune@mdm_dpo``. SoPo and MoDiPO see ``captions_per_epoch`` training captions per epoch; every algorithm
    steps in batches of ``batch_size``."""

    beta: float = Field(100.0, gt=0)  # Diffusion-DPO's (MoDiPO's); SoPo's is sopo.beta
    captions_per_epoch: int | None = Field(640, ge=1)  # a seeded subset of the training clips; null: all
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    sopo: DiffusionSoPoConfig = DiffusionSoPoConfig()
    modipo: MoDiPOConfig = MoDiPOConfig()
    dpo: DiffusionDPOConfig = DiffusionDPOConfig()


class AlgoSection(Section):
    """The preference-finetuning algorithms (``finetune@dpo``, ``finetune@rlhf``, ``finetune@sopo``)."""

    beta: float = Field(0.1, gt=0)  # the DPO family's (SoPo has algo.sopo.beta)
    seed: int = Field(0, ge=0)  # the finetuning replicate: reseeds finetuning, its evaluation and win rates
    lora: LoraConfig = LoraConfig()
    dpo: DPOConfig = DPOConfig()
    sopo: SoPoConfig = SoPoConfig()
    ppo: PPOConfig = PPOConfig()
    diffusion: DiffusionAlgoConfig = DiffusionAlgoConfig()


class WinrateConfig(Section):
    """Supervised vs finetuned samples on the test-split prompts (programs no preference pair was sampled for),
    judged by the simulated labelers."""

    temperatures: list[Annotated[float, Field(gt=0)]] = Field([1.0, 1.2, 1.5, 2.0], min_length=1)  # a cell each
    prompts: int = Field(1000, ge=1)  # test prompts per temperature, a seeded subset (all when fewer)
    # first samples: a failure is the model's, not retried; its temperature comes from ``temperatures``
    sampling: SamplingConfig = SamplingConfig(retries=0)

    @field_validator("temperatures")
    @classmethod
    def _distinct(cls, temperatures: list[float]) -> list[float]:
        repeated = sorted({t for t in temperatures if temperatures.count(t) > 1})
        if repeated:
            raise ValueError(f"{repeated} listed more than once; each temperature is one cell of the report")
        return temperatures

    @model_validator(mode="after")
    def _temperature_from_list(self) -> WinrateConfig:
        if "temperature" in self.sampling.model_fields_set:
            raise ValueError("sampling.temperature: set by winrate.temperatures (one cell each); remove it")
        if self.sampling.retries:
            raise ValueError("sampling.retries: win rates judge first samples (a failure counts); set it 0")
        return self


def _check_table(baseline: str, models: list[str], replicated: list[str]) -> None:
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among models {models}")
    stray = [m for m in replicated if m not in models or m in (baseline, "gt")]
    if stray:
        raise ValueError(f"replicated {stray}: each must be a finetuned model among models {models}")


class ReportTable(Section):
    """A further table of the comparison: models compared with their own baseline (a pretrained diffusion policy
    and what was finetuned from it), with each finetuned model's preference-generation time."""

    title: str = Field(min_length=1)
    baseline: str
    models: list[str] = Field(min_length=1)
    winrate_models: list[str] = []
    replicated: list[str] = []  # finetuned with seeds 0..report.seeds-1

    @model_validator(mode="after")
    def _baseline_evaluated(self) -> ReportTable:
        _check_table(self.baseline, self.models, self.replicated)
        return self


DIFFUSION_TABLES = [
    ReportTable(
        title="MDM-style diffusion policy",
        baseline="mdm",
        models=["gt", "mdm", "mdm_sopo", "mdm_modipo", "mdm_modipo_online", "mdm_dpo"],
        winrate_models=["mdm_sopo", "mdm_modipo", "mdm_dpo"],
        replicated=["mdm_sopo"],
    ),
    ReportTable(
        title="MLD-style latent diffusion policy",
        baseline="mld",
        models=["gt", "mld", "mld_sopo", "mld_modipo"],
        winrate_models=["mld_sopo", "mld_modipo"],
        replicated=["mld_sopo"],
    ),
]


class ReportConfig(Section):
    """The cross-model comparison (reports/comparison.md): which models' metrics and win rates it reads; the
    token policies against ``baseline``, then each of ``tables`` against its own."""

    baseline: str = "sft"  # the model every other one is compared with, replication by replication
    models: list[str] = ["gt", "sft", "dpo", "rlhf", "sopo"]  # reports/metrics/<model>.json
    winrate_models: list[str] = ["dpo", "rlhf", "sopo"]  # reports/winrate/<model>.json
    # finetuned models trained with several seeds (finetune@<model>_s<k>, k < seeds, in replicates/dvc.yaml): their
    # gains across seeds are report_seeds' (reports/comparison_seeds.md); report (the default) reads seed 0 alone
    replicated: list[str] = ["dpo", "rlhf", "sopo"]
    seeds: int = Field(3, ge=1)
    tables: list[ReportTable] = DIFFUSION_TABLES

    @model_validator(mode="after")
    def _baseline_evaluated(self) -> ReportConfig:
        _check_table(self.baseline, self.models, self.replicated)
        return self


class AppConfig(Section):
    host: str = "127.0.0.1"  # another host exposes the app: set a login (MOTIONPREF_APP_USERS) then
    port: int = Field(7860, ge=1, le=65535)
    shuffle_seed: int | None = None  # each labeler's pair order; null keeps the table's order
    preview_size: int = Field(320, ge=64)


class SuiteTag(Section):
    """Which suite run an experiment belongs to: set by ``motionpref suite run`` on each experiment it queues and
    only tagged on MLflow runs (no stage reads it, so it never makes DVC rerun anything)."""

    name: str | None = None
    variant: str | None = None
    seed: int | None = None  # the suite's seed (algo.seed) of this experiment

    def tags(self) -> dict[str, str]:
        if self.name is None:
            return {}
        return {
            "motionpref.suite": self.name,
            "motionpref.variant": self.variant or "",
            "motionpref.seed": str(self.seed),
        }


class LaunchConfig(Section):
    """How a stage runs: in one process, or under ``accelerate launch`` (``motionpref.distributed``). Read by every
    stage and listed by none, so changing it reruns nothing: its results do not depend on it (up to float rounding
    and dropout masks)."""

    processes: int = Field(1, ge=1)  # processes on this machine (one per GPU on a GPU box)
    # on CUDA only; a CPU stays fp32. Not accelerate's "no": YAML 1.1 reads a bare `no` (as `dvc exp run -S`
    # rewrites params.yaml) as false
    mixed_precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    config_file: Path | None = None  # an accelerate config (several nodes, Slurm): replaces processes


class Params(Section):
    profile: str = "cpu"
    seed: int = Field(0, ge=0)
    experiment: str = Field("motionpref", min_length=1)
    threads: int = Field(2, ge=1, le=256)
    launch: LaunchConfig = LaunchConfig()
    suite: SuiteTag = SuiteTag()
    data: DataConfig = DataConfig()
    vqvae: VQVAESection = VQVAESection()
    evaluator: EvaluatorSection = EvaluatorSection()
    retrieval: RetrievalSection = RetrievalSection()
    policy: PolicySection = PolicySection()
    diffusion: DiffusionSection = DiffusionSection()
    evaluate: EvaluateSection = EvaluateSection()
    prompts: PromptsConfig = PromptsConfig()
    pairs: PairsConfig = PairsConfig()
    labels: LabelsConfig = LabelsConfig()
    ingest: IngestConfig = IngestConfig()
    app: AppConfig = AppConfig()
    reward: RewardSection = RewardSection()
    algo: AlgoSection = AlgoSection()
    winrate: WinrateConfig = WinrateConfig()
    report: ReportConfig = ReportConfig()
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def stage_seed(self, stage: str) -> int:
        """Each stage's own seed, derived from the global one so that ``-S seed=1`` reseeds every stage
        while stages (the evaluator and the retrieval scorer, say) never share a random stream."""
        digest = hashlib.sha256(f"{self.seed}:{stage}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def section_dict(self, *names: str) -> dict[str, Any]:
        """The named sections as plain data (what a stage reads, for MLflow params and hashing)."""
        dumped = self.model_dump(mode="json")
        return {n: dumped[n] for n in names}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def error_lines(err: ValidationError, prefix: str) -> list[str]:
    lines = []
    for e in err.errors():
        key = prefix + (".".join(str(p) for p in e["loc"]) or "<top>")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return lines


def _format_errors(err: ValidationError, source: str) -> str:
    return "\n".join([f"{source}: invalid parameters", *error_lines(err, "")])


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping and return it with the selected profile's overrides applied. Every other profile
    is validated too, so that a broken one fails now rather than when someone selects it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        base = Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    if base.profile != "cpu" and base.profile not in base.profiles:
        known = ", ".join(dict.fromkeys(["cpu", *base.profiles]))
        raise ConfigError(f"{source}: profile: unknown profile {base.profile!r}; expected one of {known}")
    resolved, problems = {"cpu": base}, []
    for name, override in base.profiles.items():
        if "profile" in override or "profiles" in override:
            problems.append(f"  profiles.{name}: a profile cannot set 'profile' or 'profiles'")
            continue
        try:
            resolved[name] = Params.model_validate(_deep_merge(raw, override))
        except ValidationError as e:
            problems += error_lines(e, f"profiles.{name}.")
    if problems:
        raise ConfigError("\n".join([f"{source}: invalid parameters", *problems]))
    return resolved[base.profile]


def _refuse_duplicate_keys(node: yaml.Node, path: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}.{i}")
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in node.value:
            name = f"{path}.{key.value}" if path else str(key.value)
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode):
                if key.value in first_line:
                    raise yaml.YAMLError(f"{name}: key given twice, on lines {first_line[key.value]} and {line}")
                first_line[key.value] = line
            _refuse_duplicate_keys(value, name)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader refusing a key given twice in one mapping: YAML forbids it, PyYAML silently keeps the last."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "")
        return super().construct_document(node)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameters file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; expected a YAML parameters file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "expected a YAML parameters file"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the parameters file ({e.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_params(raw or {}, str(path))


def params_hash(data: dict[str, Any]) -> str:
    """Short stable hash of the params a stage reads, to tell runs apart at a glance."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
