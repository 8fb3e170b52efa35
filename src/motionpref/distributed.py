"""Running a stage across processes with accelerate: the launcher, and what the sharded trainers share.

``launch.processes`` above 1 (or ``launch.config_file``, an accelerate config for several nodes or a Slurm job) makes
``run_stage`` run the stage's own command again under ``accelerate launch``. There every process runs the stage:
``Accelerator`` joins them (gloo on CPU, NCCL on GPUs), each takes its share of every global batch, DDP all-reduces
the gradients, and only the main process writes outputs and logs to MLflow. A global batch is the same whatever the
process count (the same rows, captions and templates are drawn before it is split), and each share's loss is
weighted so that DDP's mean of the gradients is the gradient of the whole batch's loss: one process and several
train the same model, up to float rounding. Dropout masks are drawn per process, so with dropout on the runs are
two draws of the same training, not the same numbers.

Stages that train or sample (``shards``) are launched so; any other stage runs in one process whatever the param.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

from motionpref.config import LaunchConfig

if TYPE_CHECKING:
    import numpy as np
    from accelerate import Accelerator

T = TypeVar("T")
M = TypeVar("M", bound="HasModel")
# evaluate.metrics' SampleFn and its answer, spelled out: importing that module here would make its code a dep of
# every stage (the pipeline imports this one)
Sampled = Any
SampleFn = Callable[[list[str], list[int], list[int]], Sampled]


class HasModel(Protocol):
    model: Any


# the stages that train or sample: each splits its work across launched processes; the others (reading, labelling,
# ingesting, reporting) run in one process whatever the param
SHARDED_STAGES = frozenset(
    {
        "train_vqvae",
        "train_evaluator",
        "train_retrieval",
        "train_policy",
        "train_diffusion",
        "train_reward",
        "sample_pairs",
        "finetune",
        "evaluate",
        "winrate",
    }
)


def shards(name: str, item: str | None) -> bool:
    """Whether stage ``name`` (item ``item``) splits its work across launched processes."""
    return name in SHARDED_STAGES and not (name == "evaluate" and item == "gt")  # gt's motions are read, not sampled


LAUNCHED = "MOTIONPREF_LAUNCHED"  # set in the launched processes' environment: they must not launch again


def launched() -> bool:
    """Whether this process was started by ``relaunch``. Raises if the launcher started it alone (``WORLD_SIZE``
    unset), which would otherwise run the stage unsharded while the user asked for several processes."""
    if LAUNCHED not in os.environ:
        return False
    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError("accelerate launch started this stage in one process without a process group")
    return True


def wants_launch(config: LaunchConfig) -> bool:
    return config.processes > 1 or config.config_file is not None


def _cuda() -> bool:
    import torch  # slow to import: the CLI imports this module for every command

    return torch.cuda.is_available()


def mixed_precision(config: LaunchConfig) -> str:
    """The precision a run uses: ``launch.mixed_precision`` on CUDA; full fp32 on CPU, where bf16 autocast is slower
    and rounds differently from the committed outputs."""
    return config.mixed_precision if _cuda() and config.mixed_precision != "fp32" else "no"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(config: LaunchConfig, module: str, args: Sequence[str]) -> list[str]:
    """``accelerate launch`` of ``python -m module args`` as ``config`` asks."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--quiet"]
    if config.config_file is not None:
        cmd += ["--config_file", str(config.config_file)]
    else:
        cmd += ["--num_processes", str(config.processes), "--num_machines", "1"]
        cmd += ["--main_process_port", str(_free_port())]  # two launched stages (tests, a queue) never collide
        # torchrun's launcher, on CPU too: `--cpu` would pick accelerate's simple launcher, which starts one process
        # (it runs several only through mpirun); Accelerator(cpu=True) then joins them over gloo
        cmd += ["--multi_gpu"]
        cmd += ["--dynamo_backend", "no"]  # every value given: accelerate warns of each default it fills in
    cmd += ["--mixed_precision", mixed_precision(config), "-m", module, *args]
    return cmd


def relaunch(config: LaunchConfig, name: str, item: str | None, params_path: str) -> None:
    """Run stage ``name`` again under ``accelerate launch`` and wait for every process; a failed process fails
    the stage (accelerate's exit status)."""
    args = [*([item] if item else []), "--params", params_path]
    command = launch_command(config, f"motionpref.pipeline.{name}", args)
    done = subprocess.run(command, check=False, env={**os.environ, LAUNCHED: "1"})
    if done.returncode:
        address = f"{name}@{item}" if item else name
        raise RuntimeError(f"stage {address}: a launched process failed (exit status {done.returncode}); see above")


def accelerator(config: LaunchConfig) -> Accelerator:
    from accelerate import Accelerator

    return Accelerator(cpu=not _cuda(), mixed_precision=mixed_precision(config))


def is_main_process() -> bool:
    """Rank 0 of a launched job, or a process that was not launched: the one that writes and logs."""
    return os.environ.get("RANK", "0") == "0"


def share(rows: Sequence[T], accel: Accelerator) -> list[T]:
    """This process's rows of a global batch: contiguous slices, the first processes one row longer when it does
    not divide. Empty when the batch has fewer rows than processes (``share_weight`` is then 0)."""
    n, world, rank = len(rows), accel.num_processes, accel.process_index
    begin = rank * (n // world) + min(rank, n % world)
    return list(rows[begin : begin + n // world + (rank < n % world)])


class TrainShare(NamedTuple, Generic[T]):
    """``share_to_train``'s answer: this process's rows of a training batch, whether they count, and the weight
    of a mean over them (``share_weight`` of the rows; 0 for a stand-in)."""

    rows: list[T]
    counted: bool
    weight: float


def share_to_train(rows: Sequence[T], accel: Accelerator) -> TrainShare[T]:
    """This process's rows of a training batch (``share``), whether they count, and the weight of a mean over
    them. A process the batch leaves without rows gets its first row as a stand-in, weighted 0: it must still
    run a forward and backward pass to join DDP's all-reduce of the gradients."""
    mine = share(rows, accel)
    if mine:
        return TrainShare(mine, True, share_weight(len(mine), len(rows), accel))
    return TrainShare(list(rows[:1]), False, 0.0)


def share_weight(local: float, total: float, accel: Accelerator) -> float:
    """The factor that turns the mean of a loss over this process's share (``local`` rows or tokens of ``total``)
    into its part of the global batch's mean, under DDP's averaging of gradients over processes. Exactly 1 in one
    process, so a single-process run computes what it did before sharding."""
    return local * accel.num_processes / total


def reduce_sum(value: float, accel: Accelerator) -> float:
    """``value`` summed over processes (itself in one process)."""
    if accel.num_processes == 1:
        return value
    import torch

    return float(accel.reduce(torch.tensor(float(value), device=accel.device), reduction="sum").item())


@contextmanager
def bare_model(policy: M, accel: Accelerator) -> Iterator[M]:
    """The policy with its DDP wrapper taken off for the duration: for what a wrapper cannot do (``generate``,
    adapters switched off) and for passes that do not train, which must not join DDP's collectives."""
    prepared: Any = policy.model
    policy.model = accel.unwrap_model(prepared)
    try:
        yield policy
    finally:
        policy.model = prepared


def sharded_sample_fn(sample_fn: SampleFn, accel: Accelerator) -> SampleFn:
    """``sample_fn`` (``evaluate.metrics``' sampler) with each call's captions shared across the launched processes
    (``shared_rows``), so that every process holds the whole answer, retried samples included. Each motion is drawn
    from its own seed, so the answer is the one a single process gives."""
    if accel.num_processes == 1:
        return sample_fn

    def sample(captions: list[str], lengths: list[int], seeds: list[int]) -> Sampled:
        def compute(rows: list[int]) -> list[tuple[np.ndarray, bool, np.ndarray | None]]:
            out = sample_fn(*([column[i] for i in rows] for column in (captions, lengths, seeds)))
            first, again = out if isinstance(out, tuple) else (out, None)
            return [(m, again is not None, None if again is None else again.get(j)) for j, m in enumerate(first)]

        answered = shared_rows(len(captions), compute, accel)
        motions = [m for m, _, _ in answered]
        if not any(retries for _, retries, _ in answered):
            return motions
        return motions, {i: m for i, (_, _, m) in enumerate(answered) if m is not None}

    return sample


def shared_rows(n: int, compute: Callable[[list[int]], Sequence[T]], accel: Accelerator) -> list[T]:
    """``compute(rows)`` (one result per row) for this process's share of rows 0..n-1, gathered back in order, so
    every process holds all n results; ``compute`` of every row in one process. For work each row does alone (a
    sample drawn from its own seed), whose answer does not depend on how the rows are split."""
    if accel.num_processes == 1:
        return list(compute(list(range(n))))
    from accelerate.utils import gather_object

    rows = share(range(n), accel)
    mine = list(compute(rows)) if rows else []
    return [x for part in gather_object([mine]) for x in part]


def average_gradients(params: Sequence[Any], accel: Accelerator) -> None:
    """Each parameter's gradient replaced by its mean over the processes, for replicas that train on the same
    batch without a DDP wrapper: they stay identical even where a device's kernels round differently."""
    if accel.num_processes == 1:
        return
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    flat = accel.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def reduce_counter(counter: dict[str, int], keys: Sequence[str], accel: Accelerator) -> dict[str, int]:
    """``counter``'s ``keys`` summed over processes (every process passes the same keys, in the same order)."""
    return {key: int(reduce_sum(counter.get(key, 0), accel)) for key in keys}


def gather_rows(part: Any, counted: bool, accel: Accelerator) -> Any:
    """A batch tensor's rows (dim 0) of every process's share (``share_to_train``'s ``part`` and ``counted``),
    gathered in order on the CPU and detached, a stand-in's rows left out: the whole batch's values for metrics
    that are not means of means. The tensor itself in one process, so that those metrics are what they were."""
    if accel.num_processes == 1:
        return part
    import torch
    from accelerate.utils import gather_object

    parts = gather_object([part.detach().cpu() if counted else None])
    return torch.cat([p for p in parts if p is not None])


def gather_with_grad(part: Any, n: int, accel: Accelerator) -> Any:
    """The whole batch of ``n`` rows (dim 0) from every process's share of it (``share``'s layout; a stand-in row
    of a process without a share is left out), in order, with autograd: for a loss that pairs each row with the
    batch's other rows (contrastive negatives). Every process then computes the whole batch's loss, weighted 1:
    the backward sums every process's copy of the loss into each process's own rows (the process count times one
    copy's gradient), and averaging the parameters' gradients over the processes (DDP, ``average_gradients``)
    divides that count out again, leaving the one-process gradient. The tensor itself in one process."""
    if accel.num_processes == 1:
        return part
    import torch
    import torch.distributed as dist

    world, rank = accel.num_processes, accel.process_index
    sizes = [n // world + (k < n % world) for k in range(world)]
    begin = sum(sizes[:rank])

    class Gather(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, rows: torch.Tensor) -> torch.Tensor:
            padded = rows.new_zeros((max(sizes), *rows.shape[1:]))  # all_gather takes tensors of one shape
            padded[: len(rows)] = rows
            parts = [torch.empty_like(padded) for _ in sizes]
            dist.all_gather(parts, padded)
            return torch.cat([p[:size] for p, size in zip(parts, sizes, strict=True)])

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            summed = grad.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(summed)  # every process's copy of the loss reaches these rows
            return summed[begin : begin + sizes[rank]]

    return Gather.apply(part[: sizes[rank]])


G = TypeVar("G")


def sharded_generator(generator: G, accel: Accelerator) -> G:
    """``generator`` (a ``models.generator.MotionGenerator`` or a diffusion one) with the captions of each
    ``generate(captions, seeds, ...)`` call shared across the launched processes and its ``Generation`` (lists
    of one item per caption) gathered back in order, so that every process holds the whole answer, retries
    included. Each motion is drawn from its own seed, so the answer is the one a single process gives. The
    generator itself in one process."""
    if accel.num_processes == 1:
        return generator
    return _ShardedGenerator(generator, accel)  # type: ignore[return-value]


class _ShardedGenerator:
    def __init__(self, generator: Any, accel: Accelerator) -> None:
        self._generator, self._accel = generator, accel

    def __getattr__(self, name: str) -> Any:  # all but generate is the generator's own
        return getattr(self._generator, name)

    def generate(self, captions: Sequence[str], seeds: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        from dataclasses import fields, replace

        from accelerate.utils import gather_object

        rows = share(range(len(captions)), self._accel)
        # a process left without captions answers an empty Generation: the gather still needs its part
        mine = self._generator.generate([captions[i] for i in rows], [seeds[i] for i in rows], *args, **kwargs)
        parts = gather_object([mine])
        return replace(mine, **{f.name: [x for part in parts for x in getattr(part, f.name)] for f in fields(mine)})
