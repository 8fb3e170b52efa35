"""Sampling throughput of the text-to-motion policy (KV-cached ``generate``) against a forward-pass ceiling.

For each batch size the policy samples one motion per caption (per-row seeds, as ``sample_pairs`` does) and
we report motions/s and generated tokens/s. The ceiling is one teacher-forced forward pass over the same
number of answer tokens (batch x decode steps): what scoring those tokens costs when all positions run in
parallel, so ``generate_vs_forward`` is the price of decoding one token at a time.

    python bench/sampling.py [--policy DIR] [--batch-sizes 1 16 64] [--device cpu|cuda]

Without ``--policy`` a random-init policy of the default CPU size is used; its samples are mostly invalid,
which does not matter for speed. Prints a table and writes ``reports/bench/sampling.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from motionpref.models.policy import MotionPolicy, PolicyConfig

CAPTIONS = [
    "a person walks forward and then turns around",
    "a man jumps up twice with both feet",
    "someone waves the right hand above the head",
    "the person crouches down and stands back up slowly",
    "a figure runs in a circle counterclockwise",
    "a man kicks with the left leg",
]
# 196 frames (HumanML3D's longest clip) / 4 = 49 codes, + start, end and </s>.
DEFAULT_MAX_NEW_TOKENS = 52


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, kernels, lazy init
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_batch(policy: MotionPolicy, batch_size: int, max_new_tokens: int, repeats: int) -> dict[str, float]:
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]
    seeds = list(range(batch_size))
    device = policy.device

    def sample():
        return policy.sample(captions, seeds, max_new_tokens=max_new_tokens, batch_size=batch_size)

    seconds = _median_seconds(sample, repeats, device)
    batch = sample()
    # A row that stopped early also produced its </s>; rows that finished wait, masked, for the longest one.
    generated = sum(len(t) + (len(t) < max_new_tokens) for t in batch.token_ids)
    steps = max(len(t) + (len(t) < max_new_tokens) for t in batch.token_ids)
    prompts = [policy.prompt(c) for c in captions]
    codes = [[i % policy.codebook_size for i in range(max(1, steps - 3))]] * batch_size
    answer_tokens = batch_size * (len(codes[0]) + 3)

    def forward():
        with torch.no_grad():
            return policy.token_scores(prompts, codes)

    policy.model.eval()
    forward_seconds = _median_seconds(forward, repeats, device)
    return {
        "batch_size": batch_size,
        "seconds": seconds,
        "motions_per_s": batch_size / seconds,
        "tokens_per_s": generated / seconds,
        "generated_tokens": generated,
        "decode_steps": steps,
        "invalid": batch.n_invalid,
        "forward_seconds": forward_seconds,
        "forward_tokens_per_s": answer_tokens / forward_seconds,
        "generate_vs_forward": (generated / seconds) / (answer_tokens / forward_seconds),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, help="saved policy dir (default: random-init, default size)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/sampling.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.policy is not None:
        policy = MotionPolicy.load(args.policy)
        source = str(args.policy)
    else:
        config = PolicyConfig()
        policy = MotionPolicy.from_scratch(config, CAPTIONS, seed=0)
        source = f"random init {dataclasses.asdict(config)}"
    device = torch.device(args.device)
    policy.model.to(device).eval()

    rows = [bench_batch(policy, b, args.max_new_tokens, args.repeats) for b in args.batch_sizes]
    report = {
        "policy": source,
        "arch": policy.arch,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "vocab_size": len(policy.tokenizer),
        "max_new_tokens": args.max_new_tokens,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": rows,
    }
    size = f"{report['parameters']:,} parameters, {report['torch_threads']} threads"
    print(f"{source} on {report['device']} ({size})")
    print(f"{'batch':>5} {'motions/s':>10} {'tokens/s':>10} {'fwd tokens/s':>13} {'gen/fwd':>8} {'invalid':>8}")
    for r in rows:
        print(
            f"{r['batch_size']:>5} {r['motions_per_s']:>10.2f} {r['tokens_per_s']:>10.0f} "
            f"{r['forward_tokens_per_s']:>13.0f} {r['generate_vs_forward']:>8.3f} {r['invalid']:>8}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    return report


if __name__ == "__main__":
    main()
