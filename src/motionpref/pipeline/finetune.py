"""Stage finetune@<algo>: preference finetuning of the SFT policy into ``data/models/policy_<algo>``.

- ``dpo``: the DPO family (``algo.dpo.loss``: sigmoid | ipo | hinge | kto) on the labelled pairs, beta ``algo.beta``;
- ``rlhf``: PPO against the reward model (``train_reward``), on the training split's prompts;
- ``sopo``: semi-online preference optimisation, dataset motions against the policy's own samples scored by the
  retrieval scorer, beta ``algo.sopo.beta``;
- ``<mdm|mld>_sopo``, ``<mdm|mld>_modipo``, ``<mdm|mld>_modipo_online``: SoPo and MoDiPO (Diffusion-DPO, beta
  ``algo.diffusion.beta``) on the diffusion policy ``policy_<family>`` (``train.diffusion``);
- ``mdm_dpo``: Diffusion-DPO on the labelled pairs of MDM samples (``ingest_labels@mdm``).

Each algorithm module exposes ``run(job, config, data)``; this stage only gathers its inputs. Every algorithm is
seeded from ``algo.seed`` (the finetuning replicate) as well as the global seed; the item ``<algo>_s<k>`` is
replicate ``algo.seed + k`` (``artifacts.replicate``), written beside the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from motionpref.config import Params, SamplingConfig
from motionpref.pipeline import StageContext, artifacts

if TYPE_CHECKING:
    from motionpref.models.generator import MotionGenerator
    from motionpref.models.policy import MotionPolicy

ITEM = "algorithm"


def _dpo(params: Params, ctx: StageContext) -> tuple[Callable[..., dict[str, Any]], Any, Any, float | None]:
    from motionpref.models.policy import MotionPolicy
    from motionpref.train import dpo
    from motionpref.train.preference import filter_pairs, preference_pairs, read_preferences

    cfg = params.algo
    path = ctx.path(artifacts.PREFERENCES)
    table = read_preferences(path)
    train = filter_pairs(preference_pairs(table, "train", str(path)), cfg.dpo.data, _seed(params, ctx))
    val = preference_pairs(table, "val", str(path))
    policy = MotionPolicy.load(ctx.path(artifacts.POLICY_SFT))
    # scoring samples costs far more than the preference validation pass: built only when it picks the epoch
    val_score = _val_r_precision(params, ctx) if cfg.dpo.select_by == "val_metric" else None
    return dpo.run, cfg.dpo, dpo.DPOData(policy, train, val, val_score), cfg.beta


def _val_r_precision(params: Params, ctx: StageContext) -> Callable[[MotionPolicy], float]:
    """``select_by: val_metric``'s score of a policy: the evaluator's R-precision top-1 of its samples on the
    dataset's val split, by evaluate@<model>'s protocol at ``algo.dpo.val_sizes`` and ``val_sampling``.

    The test split stays unseen until evaluate. One seed for every call, so every epoch (and every replicate) is
    scored on the same captions, crops and sampling seeds.
    """
    from motionpref.evaluate.metrics import evaluate_model
    from motionpref.models.evaluator import Evaluator
    from motionpref.models.generator import MotionGenerator
    from motionpref.models.vqvae import MotionVQVAE

    cfg = params.algo.dpo
    spec = ctx.dataset(params.data)
    val = spec.load("val")
    mean, std = spec.stats()
    evaluator = Evaluator.load(ctx.path(artifacts.EVALUATOR))
    vqvae = MotionVQVAE.load(ctx.path(artifacts.VQVAE))
    seed = params.stage_seed("finetune@dpo:val_metric")

    def score(policy: MotionPolicy) -> float:
        generator = MotionGenerator(policy, vqvae, mean, std, cfg.val_sampling, fallback_frames=params.data.min_len)
        return evaluate_model(generator.sample_fn(), val, evaluator, cfg.val_sizes, seed)["r_precision_top1"]["mean"]

    return score


def _rlhf(params: Params, ctx: StageContext) -> tuple[Callable[..., dict[str, Any]], Any, Any, float | None]:
    from motionpref.models.reward import RewardModel
    from motionpref.train import ppo
    from motionpref.train.preference import preference_pairs, read_preferences

    cfg = params.algo.ppo
    path = ctx.path(artifacts.PREFERENCES)
    captions = sorted({p.caption for p in preference_pairs(read_preferences(path), "train", str(path))})
    reward = RewardModel.load(ctx.path(artifacts.REWARD))
    data = ppo.PPOData(_generator(params, ctx, cfg.sampling), reward.score, reward.model, captions)
    return ppo.run, cfg, data, None


def _sopo(params: Params, ctx: StageContext) -> tuple[Callable[..., dict[str, Any]], Any, Any, float | None]:
    from motionpref.models.retrieval import RetrievalModel
    from motionpref.train import sopo
    from motionpref.train.policy import load_examples

    cfg = params.algo.sopo
    generator = _generator(params, ctx, cfg.sampling)
    entries = ctx.dataset(params.data).load("train")
    examples = load_examples(entries, ctx.path(artifacts.TOKENS), generator.vqvae.codebook_size)
    scorer = RetrievalModel.load(ctx.path(artifacts.RETRIEVAL))
    data = sopo.SoPoData(generator, scorer, examples, [e.features for e in entries])
    return sopo.run, cfg, data, cfg.beta


def _diffusion(family: str, algorithm: str) -> Callable[[Params, StageContext], tuple[Any, ...]]:
    """finetune@<family>_<algorithm> on the diffusion policy ``data/models/policy_<family>``."""

    def gather(params: Params, ctx: StageContext) -> tuple[Callable[..., dict[str, Any]], Any, Any, float | None]:
        from functools import partial

        from motionpref.models.diffusion import load_policy
        from motionpref.models.retrieval import RetrievalModel
        from motionpref.train import diffusion

        cfg = params.algo.diffusion
        spec = ctx.dataset(params.data)
        entries = spec.load("train")
        mean, std = spec.stats()
        examples = diffusion.DiffusionExamples.from_entries(entries, mean, std)
        sampling = getattr(params.diffusion, family).sampling
        data = diffusion.DiffusionFinetuneData(
            load_policy(ctx.path(artifacts.policy(family))),
            RetrievalModel.load(ctx.path(artifacts.RETRIEVAL)),
            examples,
            mean,
            std,
            sampling,
        )
        if algorithm == "sopo":
            return partial(diffusion.run_sopo, family=family), cfg, data, cfg.sopo.beta
        if algorithm == "dpo":
            from motionpref.train.preference import read_preferences

            path = ctx.path(artifacts.prefs_path(family, artifacts.PREFERENCES))
            pairs = diffusion.labelled_pairs(read_preferences(path), ctx.root, mean, std, "train", str(path))
            return partial(diffusion.run_diffusion_dpo, pairs=pairs), cfg, data, cfg.beta
        return partial(diffusion.run_modipo, online=algorithm == "modipo_online"), cfg, data, cfg.beta

    return gather


# algorithm -> (params, ctx) -> (run, config, data, beta)
ALGORITHMS = {
    "dpo": _dpo,
    "rlhf": _rlhf,
    "sopo": _sopo,
    **{f"{f}_{a}": _diffusion(f, a) for f in ("mdm", "mld") for a in ("sopo", "modipo", "modipo_online")},
    "mdm_dpo": _diffusion("mdm", "dpo"),  # labelled pairs of MDM samples only (sample_pairs@mdm)
}


def _algorithm(item: str) -> tuple[str, int]:
    """``dpo`` -> (dpo, 0); ``dpo_s2`` -> (dpo, 2)."""
    name, sep, k = item.rpartition("_s")
    if sep and name in ALGORITHMS and k.isdigit() and artifacts.replicate(name, int(k)) == item:
        return name, int(k)
    if item in ALGORITHMS:
        return item, 0
    raise ValueError(
        f"finetune@{item}: unknown algorithm; expected one of {', '.join(ALGORITHMS)}, or <algorithm>_s<k> for "
        "seed replicate k"
    )


def _seed(params: Params, ctx: StageContext) -> int:
    assert ctx.item is not None
    algo, k = _algorithm(ctx.item)
    return params.stage_seed(f"finetune@{algo}:{params.algo.seed + k}")


def _generator(params: Params, ctx: StageContext, sampling: SamplingConfig) -> MotionGenerator:
    from motionpref.models.generator import MotionGenerator
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.vqvae import MotionVQVAE

    mean, std = ctx.dataset(params.data).stats()
    vqvae = MotionVQVAE.load(ctx.path(artifacts.VQVAE))
    return MotionGenerator(MotionPolicy.load(ctx.path(artifacts.POLICY_SFT)), vqvae, mean, std, sampling)


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.train.preference import FinetuneJob

    item = ctx.item
    assert item is not None
    algo, _ = _algorithm(item)
    algorithm, config, data, beta = ALGORITHMS[algo](params, ctx)
    job = FinetuneJob(
        seed=_seed(params, ctx),
        lora=params.algo.lora,
        out_dir=ctx.path(artifacts.policy(item)),
        beta=beta,
        log_metric=ctx.run.log_metric,
        accelerator=ctx.accelerator,
    )
    metrics = algorithm(job, config, data)
    if ctx.is_main:
        write_json(ctx.path(artifacts.finetune_report(item)), {**metrics, "seed": job.seed})
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
