"""Cost of one DPO-family training step against one supervised step on the same batch.

Three training steps and the reference pass, each timed on the same B preference pairs, under LoRA (peft
defaults of ``LoraConfig``) and under full finetuning (the reference is then a frozen deep copy of the policy):

- ``sft``: teacher-forced forward on the B chosen answers, token-mean NLL (as ``train_policy``), backward,
  gradient clipping, AdamW step;
- ``dpo_precomputed``: ``pair_logprobs`` on the 2B answers, ``preference_loss`` against reference
  log-probabilities computed once before timing (as ``train_dpo`` does), backward, clipping, AdamW step;
- ``dpo_online``: the same, with ``reference_logprobs`` (chosen and rejected) recomputed inside every step;
- ``reference``: that reference pass alone (no gradient), what precomputing costs per batch, once per run.

All steps use ``DPOConfig``'s optimiser settings, so the ratios isolate the loss. Each runs once as warm-up,
then ``--repeats`` times, interleaved; the median (``time.perf_counter``) is reported, with tokens/s over the
answer tokens each processes (B answers for ``sft``, 2B for the others).

    python bench/dpo_step.py [--batch-size 64] [--repeats 5] [--loss ipo] [--threads N] [--scratch]

By default the SFT policy ``data/models/policy_sft`` and B seeded training pairs of
``data/prefs/preferences.parquet``; ``--scratch`` uses a random-init policy of the default size and random
codes instead. Prints a table and writes ``reports/bench/dpo_step.json``.
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
STEPS = ("sft", "dpo_precomputed", "dpo_online", "reference")


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


def scratch_pairs(n: int, codebook_size: int, seed: int) -> list[PreferencePair]:
    rng = random.Random(seed)

    def motion() -> tuple[int, ...]:
        return tuple(rng.randrange(codebook_size) for _ in range(rng.randint(*SCRATCH_LENGTHS)))

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
    reduction = logprob_reduction(config.loss)
    captions = [p.caption for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]

    def update(loss: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimiser.step()

    def sft_step() -> None:
        scores = policy.token_scores([policy.prompt(c) for c in captions], chosen)
        update(-scores.logprobs.sum() / scores.mask.sum())

    def dpo_step(ref: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        rw, rl = reference_logprobs(reference, pairs, reduction) if ref is None else ref
        pw, pl = pair_logprobs(policy, captions, chosen, rejected, reduction)
        update(preference_loss(config.loss, pw, pl, rw, rl, beta, config.label_smoothing).mean())

    precomputed = reference_logprobs(reference, pairs, reduction)
    sft_tokens = sum(len(c) + 3 for c in chosen)  # start, codes, end, </s>
    dpo_tokens = sft_tokens + sum(len(r) + 3 for r in rejected)
    tokens = {"sft": sft_tokens, "dpo_precomputed": dpo_tokens, "dpo_online": dpo_tokens, "reference": dpo_tokens}
    times = _interleaved_seconds(
        {
            "sft": sft_step,
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
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY, help="saved SFT policy dir")
    parser.add_argument("--prefs", type=Path, default=PREFERENCES, help="preference table (train split is used)")
    parser.add_argument("--scratch", action="store_true", help="random-init policy and random codes instead")
    parser.add_argument("--batch-size", type=int, default=64, help="preference pairs per step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loss", choices=["sigmoid", "ipo", "hinge", "kto"], default="ipo")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="which pairs, LoRA init")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        parser.error(f"--batch-size ({args.batch_size}) and --repeats ({args.repeats}) must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    load_at_start = os.getloadavg()[0]

    if args.scratch:
        config = PolicyConfig()
        policy = MotionPolicy.from_scratch(config, CAPTIONS, seed=args.seed)
        pairs = scratch_pairs(args.batch_size, policy.codebook_size, args.seed)
        source = f"random init (PolicyConfig defaults: d_model {config.d_model}, {config.num_layers} layers)"
        data = f"random codes, {SCRATCH_LENGTHS[0]}-{SCRATCH_LENGTHS[1]} per motion"
    else:
        if not (args.policy / "config.json").is_file():
            parser.error(f"{args.policy}: no saved policy (run the train_policy stage, or pass --scratch)")
        policy = MotionPolicy.load(args.policy)
        train = preference_pairs(read_preferences(args.prefs), "train", source=str(args.prefs))
        if len(train) < args.batch_size:
            parser.error(f"{args.prefs}: {len(train)} training pairs, fewer than --batch-size {args.batch_size}")
        pairs = random.Random(args.seed).sample(train, args.batch_size)
        source, data = str(args.policy), f"{args.prefs} train split, {args.batch_size} seeded pairs"

    dpo = DPOConfig(loss=args.loss, batch_size=args.batch_size)
    beta = AlgoSection().beta
    modes = [
        bench_mode(policy, pairs, LoraConfig(enabled=enabled), dpo, beta, args.repeats, args.seed)
        for enabled in (True, False)
    ]
    report = {
        "policy": source,
        "data": data,
        "arch": policy.arch,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "batch_size": args.batch_size,
        "mean_answer_tokens": {
            "chosen": statistics.mean(len(p.chosen) + 3 for p in pairs),
            "rejected": statistics.mean(len(p.rejected) + 3 for p in pairs),
        },
        "loss": args.loss,
        "reduction": logprob_reduction(args.loss),
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
            "load_average_1m": {"start": load_at_start, "end": os.getloadavg()[0]},
        },
        "results": modes,
    }
    print(f"{source}: {report['parameters']:,} parameters, {report['machine']['torch_threads']} threads")
    print(f"B={args.batch_size} pairs, loss {args.loss}, median of {args.repeats}")
    header = f"{'mode':>5} {'trainable':>10} {'step':>16} {'s/step':>8} {'tokens/s':>9} {'x sft':>6}"
    print(header)
    for mode in modes:
        name = "lora" if mode["lora"] else "full"
        for step in STEPS:
            r = mode[step]
            ratio = r["seconds"] / mode["sft"]["seconds"]
            print(
                f"{name:>5} {mode['trainable_parameters']:>10,} {step:>16} {r['seconds']:>8.3f} "
                f"{r['tokens_per_s']:>9.0f} {ratio:>6.2f}"
            )
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
