"""Cost of one DPO-family training step against one supervised step on the same batch.

Four training steps and the reference pass, each timed on the same B preference pairs, under LoRA (peft
defaults of ``LoraConfig``) and under full finetuning (the reference is then a frozen deep copy of the policy):

- ``sft``: teacher-forced forward on the B chosen answers, token-mean NLL (as ``train_policy``), backward,
  gradient clipping, AdamW step;
- ``sft_pairs``: the same on the 2B chosen and rejected answers, the very sequences a DPO step scores;
- ``dpo_precomputed``: ``pair_logprobs`` on the 2B answers, ``preference_loss`` against reference
  log-probabilities computed once before timing (as ``train_dpo`` does), backward, clipping, AdamW step;
- ``dpo_online``: the same, with ``reference_logprobs`` (chosen and rejected) recomputed inside every step;
- ``reference``: that reference pass alone (no gradient), what precomputing costs per batch, once per run.

All steps use ``DPOConfig``'s optimiser settings, so the ratios isolate the loss. Each runs once as warm-up,
then ``--repeats`` times, interleaved; the median (``time.perf_counter``) is reported, with tokens/s over the
answer tokens each processes (B answers for ``sft``, 2B for the others). The bar:
``ratio_dpo_precomputed_vs_sft_pairs`` (a DPO step with precomputed reference log-probabilities against an SFT
step on the same chosen and rejected sequences) at most 1.3.

    python bench/dpo_step.py [--size default paper] [--batch-size 64] [--paper-batch-size 8] [--repeats 5]
                             [--loss ipo] [--modes lora full] [--threads N] [--scratch]

``--size`` names the policies to measure, in one run. ``default``: the SFT policy ``data/models/policy_sft``
and B seeded training pairs of ``data/prefs/preferences.parquet``, or with ``--scratch`` a random-init policy of
the default size and random codes (21..36 codes a motion). ``paper``: MotionGPT-base (flan-t5-base's T5 with
32,100 + 515 embedding rows, ``bench/paper_size.py``) with random weights and random codes of HumanML3D's lengths
(20..49 codes), at ``--paper-batch-size`` pairs. Prints a table and writes ``reports/bench/dpo_step.json`` (one
entry per size under ``sizes``, the bar under ``bar``).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from sampling import CAPTIONS  # the sampling benchmark's captions (bench/ is on the path of a bench script)

from motionpref.config import AlgoSection, DPOConfig, LoraConfig, PolicyConfig
from motionpref.io import write_json
from motionpref.models.policy import MotionPolicy
from motionpref.progress import quiet_libraries
from motionpref.train.dpo import logprob_reduction, reference_logprobs
from motionpref.train.losses import preference_loss
from motionpref.train.preference import (
    PreferencePair,
    Reference,
    apply_lora,
    disable_dropout,
    pair_logprobs,
    preference_pairs,
    read_preferences,
)

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "data" / "models" / "policy_sft"
PREFERENCES = ROOT / "data" / "prefs" / "preferences.parquet"
OUT = ROOT / "reports" / "bench" / "dpo_step.json"
# Quartiles of the motion lengths (codes) in the pipeline's preference table.
SCRATCH_LENGTHS = (21, 36)
STEPS = ("sft", "sft_pairs", "dpo_precomputed", "dpo_online", "reference")
SIZES = ("default", "paper")
BAR_MAX_RATIO = 1.3  # a DPO step (reference precomputed) against SFT on the same chosen and rejected answers


def _interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` runs of every function, after one warm-up run each.

    Round-robin rather than one function after the other: on a shared CPU the load drifts within a run, and
    interleaving spreads that drift over every function instead of biasing the ratios between them."""
    for fn in fns.values():
        fn()  # warm-up: allocator, lazy init, AdamW's state
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def scratch_pairs(
    n: int, codebook_size: int, seed: int, lengths: tuple[int, int] = SCRATCH_LENGTHS
) -> list[PreferencePair]:
    rng = random.Random(seed)

    def motion() -> tuple[int, ...]:
        return tuple(rng.randrange(codebook_size) for _ in range(rng.randint(*lengths)))

    return [
        PreferencePair(f"pair-{i}", CAPTIONS[i % len(CAPTIONS)], motion(), motion(), "better", 2.0) for i in range(n)
    ]


def bench_mode(
    base: MotionPolicy,
    pairs: Sequence[PreferencePair],
    lora: LoraConfig,
    config: DPOConfig,
    beta: float,
    repeats: int,
    seed: int,
) -> dict:
    """Time the steps of ``STEPS`` on a fresh copy of ``base`` (LoRA-wrapped when ``lora.enabled``)."""
    torch.manual_seed(seed)  # LoRA's init
    policy = copy.copy(base)
    policy.model = copy.deepcopy(base.model)
    disable_dropout(policy.model)
    apply_lora(policy, lora)
    policy.model.train()
    reference = Reference(policy)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    reduction = logprob_reduction(config)
    captions = [p.caption for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]

    def update(loss: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimiser.step()

    def sft_step(answers: list, prompts: list[str]) -> None:
        scores = policy.token_scores(prompts, answers)
        update(-scores.logprobs.sum() / scores.mask.sum())

    prompts = [policy.prompt(c) for c in captions]

    def dpo_step(ref: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        rw, rl = reference_logprobs(reference, pairs, reduction) if ref is None else ref
        pw, pl = pair_logprobs(policy, captions, chosen, rejected, reduction)
        update(preference_loss(config.loss, pw, pl, rw, rl, beta, config.label_smoothing).mean())

    precomputed = reference_logprobs(reference, pairs, reduction)
    sft_tokens = sum(len(c) + 3 for c in chosen)  # start, codes, end, </s>
    dpo_tokens = sft_tokens + sum(len(r) + 3 for r in rejected)
    tokens = {
        "sft": sft_tokens,
        "sft_pairs": dpo_tokens,
        "dpo_precomputed": dpo_tokens,
        "dpo_online": dpo_tokens,
        "reference": dpo_tokens,
    }
    times = _interleaved_seconds(
        {
            "sft": lambda: sft_step(chosen, prompts),
            # the 2B sequences of a DPO step, in its order (chosen then rejected) and in one forward, as pair_logprobs
            "sft_pairs": lambda: sft_step([*chosen, *rejected], [*prompts, *prompts]),
            "dpo_precomputed": lambda: dpo_step(precomputed),
            "dpo_online": lambda: dpo_step(None),
            "reference": lambda: reference_logprobs(reference, pairs, reduction),
        },
        repeats,
    )
    result: dict = {"lora": lora.enabled, "trainable_parameters": sum(p.numel() for p in params)}
    for name, runs in times.items():
        seconds = statistics.median(runs)
        result[name] = {
            "seconds": seconds,
            "min_seconds": min(runs),  # the least disturbed run, when other jobs share the CPU
            "runs": runs,
            "tokens": tokens[name],
            "tokens_per_s": tokens[name] / seconds,
        }
    # The two DPO steps compare only if the reference stayed frozen while the policy trained.
    after = reference_logprobs(reference, pairs, reduction)
    drift = max((a - b).abs().max().item() for a, b in zip(after, precomputed, strict=True))
    if drift > 1e-4:
        raise RuntimeError(f"reference log-probs moved by {drift:.2e} during training: the reference is not frozen")
    sft = result["sft"]["seconds"]
    result["ratio_dpo_precomputed_vs_sft"] = result["dpo_precomputed"]["seconds"] / sft
    result["ratio_dpo_online_vs_sft"] = result["dpo_online"]["seconds"] / sft
    result["ratio_dpo_precomputed_vs_sft_pairs"] = result["dpo_precomputed"]["seconds"] / result["sft_pairs"]["seconds"]
    result["ratio_dpo_online_vs_sft_pairs"] = result["dpo_online"]["seconds"] / result["sft_pairs"]["seconds"]
    return result


def load_size(size: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple:
    """The policy, the pairs and their descriptions for one ``--size``."""
    if size == "paper":
        from paper_size import ANSWER_CODES, paper_policy

        policy = paper_policy(seed=args.seed)
        pairs = scratch_pairs(args.paper_batch_size, policy.codebook_size, args.seed, ANSWER_CODES)
        source = "random init, MotionGPT-base size (flan-t5-base, 32,100 + 515 embedding rows)"
        return policy, pairs, source, f"random codes, {ANSWER_CODES[0]}-{ANSWER_CODES[1]} per motion"
    if args.scratch:
        config = PolicyConfig()
        policy = MotionPolicy.from_scratch(config, CAPTIONS, seed=args.seed)
        pairs = scratch_pairs(args.batch_size, policy.codebook_size, args.seed)
        source = f"random init (PolicyConfig defaults: d_model {config.d_model}, {config.num_layers} layers)"
        return policy, pairs, source, f"random codes, {SCRATCH_LENGTHS[0]}-{SCRATCH_LENGTHS[1]} per motion"
    if not (args.policy / "config.json").is_file():
        parser.error(f"{args.policy}: no saved policy (run the train_policy stage, or pass --scratch)")
    policy = MotionPolicy.load(args.policy)
    train = preference_pairs(read_preferences(args.prefs), "train", source=str(args.prefs))
    if len(train) < args.batch_size:
        parser.error(f"{args.prefs}: {len(train)} training pairs, fewer than --batch-size {args.batch_size}")
    pairs = random.Random(args.seed).sample(train, args.batch_size)
    return policy, pairs, str(args.policy), f"{args.prefs} train split, {args.batch_size} seeded pairs"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY, help="saved SFT policy dir")
    parser.add_argument("--prefs", type=Path, default=PREFERENCES, help="preference table (train split is used)")
    parser.add_argument("--scratch", action="store_true", help="default size: random-init policy and random codes")
    parser.add_argument("--size", nargs="+", choices=SIZES, default=["default"], help="policy sizes to measure")
    parser.add_argument("--batch-size", type=int, default=64, help="preference pairs per step (default size)")
    parser.add_argument("--paper-batch-size", type=int, default=8, help="preference pairs per step (paper size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    parser.add_argument("--loss", choices=["sigmoid", "ipo", "hinge", "kto"], default="ipo")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="which pairs, LoRA init")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.paper_batch_size, args.repeats) < 1:
        parser.error("--batch-size, --paper-batch-size and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    load_at_start = os.getloadavg()

    dpo = DPOConfig(loss=args.loss)
    beta = AlgoSection().beta
    sizes = {}
    for size in args.size:
        policy, pairs, source, data = load_size(size, args, parser)
        modes = [
            bench_mode(policy, pairs, LoraConfig(enabled=mode == "lora"), dpo, beta, args.repeats, args.seed)
            for mode in args.modes
        ]
        sizes[size] = {
            "policy": source,
            "data": data,
            "arch": policy.arch,
            "parameters": sum(p.numel() for p in policy.model.parameters()),
            "batch_size": len(pairs),
            "mean_answer_tokens": {
                "chosen": statistics.mean(len(p.chosen) + 3 for p in pairs),
                "rejected": statistics.mean(len(p.rejected) + 3 for p in pairs),
            },
            "results": modes,
        }
        del policy
        print(f"{size}: {source}: {sizes[size]['parameters']:,} parameters, B={len(pairs)} pairs")
        header = f"{'mode':>5} {'trainable':>11} {'step':>16} {'s/step':>8} {'tokens/s':>9} {'x sft':>6} {'x pairs':>8}"
        print(header)
        for mode in modes:
            name = "lora" if mode["lora"] else "full"
            for step in STEPS:
                r = mode[step]
                ratio = r["seconds"] / mode["sft"]["seconds"]
                pair_ratio = r["seconds"] / mode["sft_pairs"]["seconds"]
                print(
                    f"{name:>5} {mode['trainable_parameters']:>11,} {step:>16} {r['seconds']:>8.3f} "
                    f"{r['tokens_per_s']:>9.0f} {ratio:>6.2f} {pair_ratio:>8.2f}"
                )
    bar: dict = {"max_ratio_dpo_precomputed_vs_sft_pairs": BAR_MAX_RATIO, "ratios": {}, "met": {}}
    for size, entry in sizes.items():
        for mode in entry["results"]:
            key = f"{size}/{'lora' if mode['lora'] else 'full'}"
            bar["ratios"][key] = mode["ratio_dpo_precomputed_vs_sft_pairs"]
            bar["met"][key] = mode["ratio_dpo_precomputed_vs_sft_pairs"] <= BAR_MAX_RATIO
    report = {
        "loss": args.loss,
        "reduction": logprob_reduction(dpo),
        "beta": beta,
        "repeats": args.repeats,
        "seed": args.seed,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            # other work on the machine skews absolute times far more than the ratios
            "load_average": {"start": list(load_at_start), "end": list(os.getloadavg())},
        },
        "sizes": sizes,
        "bar": bar,
    }
    print(f"bar (dpo_precomputed / sft_pairs <= {BAR_MAX_RATIO}): {bar['ratios']} -> {bar['met']}")
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
