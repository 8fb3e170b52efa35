"""Sampling throughput of the text-to-motion policy (KV-cached ``generate``) against a forward-pass ceiling.

For each batch size the policy samples one motion per caption (per-row seeds, as ``sample_pairs`` does) and
we report motions/s and generated tokens/s. The ceiling is one teacher-forced forward pass over the same
number of answer tokens (batch x decode steps): what scoring those tokens costs when all positions run in
parallel, so ``generate_vs_forward`` is the price of decoding one token at a time.

    python bench/sampling.py [--policy DIR] [--size default paper] [--batch-sizes 1 16 64] [--device cpu|cuda]

``--size`` names the policies to measure, in one run: ``default`` is ``--policy`` or, without it, a random-init
policy of the default CPU size (``PolicyConfig``); ``paper`` is MotionGPT-base (flan-t5-base's T5 with 32,100 +
515 embedding rows, ``bench/paper_size.py``) with random weights. Random-init samples are mostly invalid, which
does not matter for speed. The bar: at batch 64, sampling reaches at least half the forward's tokens/s
(``generate_vs_forward`` >= 0.5). Prints a table and writes ``reports/bench/sampling.json`` (one entry per size
under ``sizes``, the bar under ``bar``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from motionpref.io import write_json
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
SIZES = ("default", "paper")
BAR_BATCH, BAR_MIN_RATIO = 64, 0.5


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


def build_policy(size: str, policy_dir: Path | None) -> tuple[MotionPolicy, str]:
    """The policy of one ``--size``: ``default`` (``--policy``, else random init at ``PolicyConfig``'s size) or
    ``paper`` (MotionGPT-base with random weights, ``bench/paper_size.py``'s ``paper_policy``)."""
    if size == "paper":
        from paper_size import paper_policy  # here, not at the top: paper_size imports this module

        return paper_policy(seed=0), "random init, MotionGPT-base size (flan-t5-base, 32,100 + 515 rows)"
    if policy_dir is not None:
        return MotionPolicy.load(policy_dir), str(policy_dir)
    config = PolicyConfig()
    return MotionPolicy.from_scratch(config, CAPTIONS, seed=0), f"random init {config.model_dump()}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, help="saved policy dir (default: random-init, default size)")
    parser.add_argument(
        "--size",
        nargs="+",
        choices=SIZES,
        default=["default"],
        help="default: --policy or PolicyConfig's size; paper: MotionGPT-base (random weights)",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/sampling.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_at_start = os.getloadavg()

    sizes = {}
    for size in args.size:
        policy, source = build_policy(size, args.policy)
        policy.model.to(device).eval()
        rows = [bench_batch(policy, b, args.max_new_tokens, args.repeats) for b in args.batch_sizes]
        sizes[size] = {
            "policy": source,
            "arch": policy.arch,
            "parameters": sum(p.numel() for p in policy.model.parameters()),
            "vocab_size": len(policy.tokenizer),
            "embedding_rows": policy.model.get_input_embeddings().weight.shape[0],
            "results": rows,
        }
        del policy
        print(f"{size}: {source} ({sizes[size]['parameters']:,} parameters)")
        print(f"{'batch':>5} {'motions/s':>10} {'tokens/s':>10} {'fwd tokens/s':>13} {'gen/fwd':>8} {'invalid':>8}")
        for r in rows:
            print(
                f"{r['batch_size']:>5} {r['motions_per_s']:>10.2f} {r['tokens_per_s']:>10.0f} "
                f"{r['forward_tokens_per_s']:>13.0f} {r['generate_vs_forward']:>8.3f} {r['invalid']:>8}"
            )
    # The bar: sampling with the KV cache reaches at least half the teacher-forced forward's tokens/s at batch 64.
    bar = {"batch_size": BAR_BATCH, "min_generate_vs_forward": BAR_MIN_RATIO, "generate_vs_forward": {}, "met": {}}
    for size, entry in sizes.items():
        row = next((r for r in entry["results"] if r["batch_size"] == BAR_BATCH), None)
        if row is not None:
            bar["generate_vs_forward"][size] = row["generate_vs_forward"]
            bar["met"][size] = row["generate_vs_forward"] >= BAR_MIN_RATIO
    report = {
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        # other work on the machine moves absolute times more than the ratios
        "load_average": {"start": list(load_at_start), "end": list(os.getloadavg())},
        "sizes": sizes,
        "bar": bar,
    }
    print(f"bar (batch {BAR_BATCH}, generate/forward >= {BAR_MIN_RATIO}): {bar['generate_vs_forward']} -> {bar['met']}")
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
