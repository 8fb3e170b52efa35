"""Sampling throughput of the diffusion policies (MDM- and MLD-style) against a denoiser-forward floor.

For each family and batch size B the policy samples B motions (lengths drawn in 40..196 frames, seeded) with
``DiffusionSamplingConfig`` (50 DDIM steps, classifier-free guidance), and we report motions/s. The floor is
``steps`` x one batched denoiser forward on the 2B rows a guided step feeds it (unconditional and conditional):
``sample_vs_forwards`` above 1 is what the scheduler, the text encoder and (MLD) the VAE decoder add. A forward
hook counts the denoiser's calls per sampling call; with guidance they must be exactly ``steps``, not 2 x steps.

    python bench/diffusion_sampling.py [--families mdm mld] [--batch-sizes 1 16 64] [--repeats 3] [--threads N]

Models are random-init at the default pipeline's sizes (params.yaml's ``diffusion.mdm.model`` and
``diffusion.mld.model``, its words text encoder): the weights do not matter for speed. Prints a table and writes
``reports/bench/diffusion_sampling.json``.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

# the token-sampling benchmark's captions and timer (bench/ is on a bench script's path)
from sampling import CAPTIONS, _median_seconds

from motionpref.config import DiffusionSamplingConfig, load_params
from motionpref.io import write_json
from motionpref.models.diffusion import DiffusionPolicy, MDMPolicy, MLDPolicy, WordTextEncoder, lengths_to_mask

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "bench" / "diffusion_sampling.json"
MIN_LEN, MAX_LEN = 40, 196  # HumanML3D's clip lengths


def build(family: str, device: torch.device) -> tuple[DiffusionPolicy, torch.nn.Module]:
    """The family's policy at the sizes the default pipeline trains (params.yaml's ``diffusion.<family>``)."""
    torch.manual_seed(0)
    section = getattr(load_params(ROOT / "params.yaml").diffusion, family)
    text = WordTextEncoder.from_captions(section.text, CAPTIONS)
    model = section.model.model_copy(update={"feature_dim": 263})
    policy = MDMPolicy(model, text) if family == "mdm" else MLDPolicy(model, text)
    policy.to(device).eval()
    return policy, policy.model if isinstance(policy, MDMPolicy) else policy.denoiser


def bench_batch(
    policy: DiffusionPolicy, denoiser: torch.nn.Module, batch_size: int, config: DiffusionSamplingConfig, repeats: int
) -> dict[str, float | int]:
    device = policy.device
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (batch_size,), generator=torch.Generator().manual_seed(batch_size))
    rows: list[int] = []
    handle = denoiser.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        policy.sample(texts, lengths, config, torch.Generator().manual_seed(0))
        calls, rows_per_call = len(rows), sorted(set(rows))
        if calls != config.steps:
            raise AssertionError(f"{calls} denoiser forwards for {config.steps} guided steps (expected one per step)")
        seconds = _median_seconds(
            lambda: policy.sample(texts, lengths, config, torch.Generator().manual_seed(0)), repeats, device
        )
    finally:
        handle.remove()

    # one guided step's forward: 2B rows at a mid-schedule timestep
    shape, masked = policy.diffusion_shape(2 * batch_size, int(lengths.max()))
    x = torch.randn(shape, device=device)
    t = torch.full((2 * batch_size,), policy.config.diffusion_steps // 2, device=device)
    mask = lengths_to_mask(torch.cat([lengths, lengths])).to(device) if masked else None
    with torch.no_grad():
        cond = torch.cat([policy.null_condition(batch_size), policy.condition(texts)])

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return policy.denoise(x, t, cond, mask)

        forward_seconds = _median_seconds(forward, repeats, device)
    return {
        "batch_size": batch_size,
        "mean_frames": float(lengths.float().mean()),
        "seconds": seconds,
        "motions_per_s": batch_size / seconds,
        "denoiser_forwards_per_sample": calls,
        "rows_per_forward": rows_per_call[0] if len(rows_per_call) == 1 else rows_per_call,
        "forward_seconds": forward_seconds,
        "sample_vs_forwards": seconds / (config.steps * forward_seconds),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=["mdm", "mld"], default=["mdm", "mld"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=DiffusionSamplingConfig().steps)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = DiffusionSamplingConfig(steps=args.steps)

    families = {}
    for family in args.families:
        policy, denoiser = build(family, device)
        families[family] = {
            "config": policy.config.model_dump(mode="json"),
            "parameters": sum(p.numel() for p in policy.parameters()),
            "denoiser_parameters": sum(p.numel() for p in denoiser.parameters()),
            "results": [bench_batch(policy, denoiser, b, config, args.repeats) for b in args.batch_sizes],
        }
    report = {
        "sampling": config.model_dump(),
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "families": families,
    }
    threads = report["torch_threads"]
    print(f"{config.steps} DDIM steps, guidance {config.guidance}, on {report['device']}, {threads} threads")
    print(f"{'family':>6} {'batch':>5} {'motions/s':>10} {'forwards':>8} {'fwd ms':>8} {'sample/fwds':>11}")
    for family, entry in families.items():
        for r in entry["results"]:
            print(
                f"{family:>6} {r['batch_size']:>5} {r['motions_per_s']:>10.2f} {r['denoiser_forwards_per_sample']:>8} "
                f"{1000 * r['forward_seconds']:>8.2f} {r['sample_vs_forwards']:>11.2f}"
            )
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
