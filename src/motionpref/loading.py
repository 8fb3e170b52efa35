"""The pipeline's trained models as text-to-motion samplers: the one place that turns a model's name into the
generator the evaluate stage samples it with, so a command that shows a model's motions samples it alike.

It lives beside the package's other top-level modules, not in ``models/``: dvc.yaml lists ``src/motionpref/models``
and ``src/motionpref/motion`` as whole folders among many stages' deps, so a new file there would rerun them.
"""

from __future__ import annotations

from pathlib import Path

from motionpref.config import DataConfig, Params
from motionpref.models import diffusion
from motionpref.models.diffusion_generator import DiffusionGenerator
from motionpref.models.generator import MotionGenerator
from motionpref.models.policy import MotionPolicy
from motionpref.models.vqvae import MotionVQVAE
from motionpref.motion.dataset import DatasetSpec
from motionpref.motion.skeleton import SKELETONS
from motionpref.pipeline import artifacts

_POLICY_PREFIX = Path(artifacts.policy("")).name  # "policy_"


def dataset_spec(root: Path, data: DataConfig) -> DatasetSpec:
    """The pipeline's dataset under ``root`` with ``data``'s skeleton and length filter, as
    ``StageContext.dataset`` builds it for a stage."""
    return DatasetSpec(
        root / artifacts.DATASET, SKELETONS[data.skeleton_name], min_len=data.min_len, max_len=data.max_len
    )


def trained_models(root: Path) -> list[str]:
    """The names of the policy folders under ``root``'s ``data/models`` (``sft``, ``dpo``, ``mdm_sopo``, ...)."""
    folder = root / artifacts.MODELS
    if not folder.is_dir():
        return []
    # atomic_dir's temp folders start with a dot, so a save in progress is not listed
    return sorted(p.name.removeprefix(_POLICY_PREFIX) for p in folder.glob(f"{_POLICY_PREFIX}*") if p.is_dir())


def load_generator(root: Path, model: str, params: Params, spec: DatasetSpec) -> MotionGenerator | DiffusionGenerator:
    """The sampler of ``data/models/policy_<model>`` under ``root``, as the evaluate stage samples it: a diffusion
    policy with ``diffusion.<family>.sampling``; a token policy decoded through ``data/models/vqvae`` with
    ``evaluate.sampling``, a failed sample standing as the mean pose held ``data.min_len`` frames. Both
    un-normalise with ``spec``'s Mean/Std.

    Only the params of the model's own kind are read, so a stage whose dvc.yaml entry declares just those
    (evaluate@sft: ``evaluate.sampling``; evaluate@mdm: ``diffusion.mdm.sampling``) can call it."""
    policy_dir = root / artifacts.policy(model)
    if not policy_dir.is_dir():
        raise FileNotFoundError(f"{policy_dir}: no trained model {model!r}")
    mean, std = spec.stats()
    if diffusion.is_diffusion_policy(policy_dir):
        policy = diffusion.load_policy(policy_dir)
        return DiffusionGenerator(policy, mean, std, getattr(params.diffusion, policy.family).sampling)
    return MotionGenerator(
        MotionPolicy.load(policy_dir),
        MotionVQVAE.load(root / artifacts.VQVAE),
        mean,
        std,
        params.evaluate.sampling,
        fallback_frames=params.data.min_len,
    )
