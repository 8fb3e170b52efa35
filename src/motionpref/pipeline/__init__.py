"""The DVC stages as library functions, one module each: ``dvc.yaml`` runs ``python -m motionpref.pipeline.<name>``
and ``motionpref <name>`` runs the same ``run_stage``.

``dvc.yaml`` is the one record of the wiring: which params each stage reads (``run_stage`` gives a stage a view of
``params.yaml`` that refuses any other key), which files it depends on and what it writes (tests/test_wiring.py
checks the deps cover the stage's code and the outs are what ``artifacts`` names). A stage module exposes
``run(params, ctx) -> metrics`` and, when it runs once per item (``evaluate@sft``), ``ITEM`` naming what the item
is. ``run_stage`` parses params.yaml once, opens the stage's MLflow run, seeds everything and hands the stage a
``StageContext``.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import random
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from motionpref import distributed
from motionpref.config import ConfigError, DataConfig, LaunchConfig, Params, load_params, params_hash
from motionpref.pipeline import artifacts
from motionpref.tracking import StageRun, project_root, stage_run

if TYPE_CHECKING:
    from accelerate import Accelerator

    from motionpref.motion.dataset import DatasetSpec

NOT_STAGES = {"artifacts"}
OUTPUTS_ARTIFACT = "outputs"  # where run_stage logs a stage's metrics files in its MLflow run
# read by run_stage for every stage but not listed in dvc.yaml: how a stage runs, not what it computes
RUNNER_PARAMS = ("experiment", "threads", "launch", "suite")


def _stage_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_STAGES)


def stage_module(name: str) -> Any:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"motionpref.pipeline.{name}")


def _describe(name: str) -> tuple[str, bool]:
    """A stage's help (the first paragraph of its module's docstring, without its ``Stage name:`` lead) and whether
    it runs per item, read from the source: importing every stage here would import the one ``python -m`` runs
    before it runs as ``__main__``."""
    tree = ast.parse(Path(__path__[0], f"{name}.py").read_text(encoding="utf-8"))
    first = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
    first = re.sub(r"^Stage [\w@<>]+: ", "", first)
    per_item = any(
        isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ITEM" for t in node.targets)
        for node in tree.body
    )
    return first[:1].upper() + first[1:], per_item


@dataclass
class StageContext:
    """Where a stage runs: its project root, its MLflow run, its item, and how it is launched (``launch``): only
    the main process (``is_main``) writes outputs."""

    root: Path
    run: StageRun
    item: str | None = None
    launch: LaunchConfig = dataclass_field(default_factory=LaunchConfig)
    is_main: bool = True

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @cached_property
    def accelerator(self) -> Accelerator:
        """This process's ``Accelerator`` (built on first use: most stages never need one)."""
        return distributed.accelerator(self.launch)

    def dataset(self, data: DataConfig) -> DatasetSpec:
        from motionpref.motion.dataset import DatasetSpec
        from motionpref.motion.skeleton import SKELETONS

        return DatasetSpec(
            self.path(artifacts.DATASET), SKELETONS[data.skeleton_name], min_len=data.min_len, max_len=data.max_len
        )


# ------------------------------------------------------------------------------------------ dvc.yaml's params
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


# the seed replicates' pipeline file, beside dvc.yaml: `dvc repro` without targets runs the root dvc.yaml alone
REPLICATES = Path("replicates", "dvc.yaml")


def _read_stages(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")).get("stages") or {}
    except (OSError, AttributeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the stages: {e}") from None


@cache
def _dvc_files(dvc_yaml: Path) -> dict[Path, dict[str, Any]]:
    """The stages of ``dvc.yaml`` and, where it exists, of its ``replicates/dvc.yaml``, file by file."""
    files = {dvc_yaml: _read_stages(dvc_yaml)}
    if (dvc_yaml.parent / REPLICATES).is_file():
        files[dvc_yaml.parent / REPLICATES] = _read_stages(dvc_yaml.parent / REPLICATES)
    return files


def _template(stage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stage.items() if k != "wdir"}


@cache
def _dvc_stages(dvc_yaml: Path) -> dict[str, Any]:
    """Every stage of ``dvc.yaml`` and ``replicates/dvc.yaml`` as one pipeline (DVC's DAG spans both files): a
    foreach stage in both is one stage with both files' items, which must share its template (``do``, but for the
    replicates' ``wdir: ..``), so that a replicate runs exactly as its seed-0 item does."""
    merged: dict[str, Any] = {}
    for path, stages in _dvc_files(dvc_yaml).items():
        for name, stage in stages.items():
            if path != dvc_yaml and (stage.get("do") or stage).get("wdir") != "..":
                raise ConfigError(f"{path}: stage {name!r} needs wdir: .. (its paths are the root's)")
            first = merged.setdefault(name, stage)
            if first is stage:
                continue
            if "foreach" not in first or "foreach" not in stage:
                raise ConfigError(f"{path}: stage {name!r} is also in {dvc_yaml}; only foreach items may be split")
            if _template(first["do"]) != _template(stage["do"]):
                raise ConfigError(f"{path}: {name}'s do differs from {dvc_yaml}'s (wdir aside); make them the same")
            both = sorted(set(first["foreach"]) & set(stage["foreach"]))
            if both:
                raise ConfigError(f"{path}: {name} items {', '.join(both)} are also in {dvc_yaml}")
            merged[name] = {**first, "foreach": {**first["foreach"], **stage["foreach"]}}
    return merged


def dvc_target(dvc_yaml: Path, address: str) -> str:
    """``address`` as DVC's commands take it: qualified by its file outside the root one
    (``replicates/dvc.yaml:finetune@dpo_s1``)."""
    name, item = _split(address)
    for path, stages in _dvc_files(dvc_yaml).items():
        stage = stages.get(name)
        if stage is not None and (item in stage["foreach"] if "foreach" in stage else item is None):
            return address if path == dvc_yaml else f"{path.relative_to(dvc_yaml.parent).as_posix()}:{address}"
    raise ConfigError(f"{dvc_yaml}: no stage {address} in it or in {REPLICATES}")


@cache
def _params_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it to resolve dvc.yaml: {e}") from None


@cache
def _resolved_stage(dvc_yaml: Path, name: str, item: str | None = None) -> dict[str, tuple[str, ...]]:
    """Stage ``name`` (``name@item`` for a foreach stage) of ``dvc.yaml`` with ``${key}``, ``${item}`` and
    ``${item.field}`` resolved in its params, deps, outs and metrics.

    Hand-resolved because DVC's own resolver needs a repo object (seconds, and its lock while ``dvc repro`` runs)
    and only those forms occur there; tests/test_wiring.py checks this against DVC's resolution of every stage."""
    address = f"{name}@{item}" if item else name
    stage = _dvc_stages(dvc_yaml).get(name)
    if stage is None:
        raise ConfigError(f"{dvc_yaml}: no stage {name!r}")
    scope: dict[str, Any] = {}
    if "foreach" in stage:
        items = stage["foreach"]
        if item is None or item not in items:
            raise ConfigError(f"{dvc_yaml}: stage {name!r} has no item {item!r}; items: {', '.join(map(str, items))}")
        scope = {"key": item, "item": items[item] if isinstance(items, dict) else item}
        stage = stage["do"]

    def resolve(match: re.Match[str]) -> str:
        head, *fields = match.group(1).split(".")
        # ${item...} from the foreach item, anything else from params.yaml as it stands (DVC's vars)
        value = scope[head] if head in scope else _params_yaml(dvc_yaml.parent / "params.yaml").get(head)
        for field in fields:
            value = value.get(field) if isinstance(value, dict) else None
        if value is None or isinstance(value, dict | list):
            raise ConfigError(f"{dvc_yaml}: {address}: cannot resolve ${{{match.group(1)}}}")
        return str(value)

    def entries(field: str) -> tuple[str, ...]:
        out = []
        for entry in stage.get(field) or []:
            if isinstance(entry, dict) and len(entry) == 1 and field != "params":
                entry = next(iter(entry))  # {path: {cache: false}}
            if not isinstance(entry, str):
                raise ConfigError(f"{dvc_yaml}: {address}: {field} entries must be strings, got {entry!r}")
            # twice: an item's value may itself be a ${params.key} (ingest_labels@sft's pairs)
            out.append(_INTERPOLATION.sub(resolve, _INTERPOLATION.sub(resolve, entry)))
        return tuple(out)  # cached: callers get a value they cannot change

    return {field: entries(field) for field in ("params", "deps", "outs", "metrics")}


def declared_params(dvc_yaml: Path, name: str, item: str | None = None) -> list[str]:
    """The params.yaml keys ``dvc.yaml`` lists for stage ``name`` (``name@item`` for a foreach stage)."""
    return list(_resolved_stage(dvc_yaml, name, item)["params"])


def stage_addresses(dvc_yaml: Path) -> list[str]:
    """Every stage of ``dvc.yaml`` and ``replicates/dvc.yaml`` as DVC addresses it within its file (``evaluate@sft``
    for each item of a foreach stage; ``dvc_target`` qualifies it for DVC's commands)."""
    out = []
    for name, stage in _dvc_stages(dvc_yaml).items():
        if "foreach" in stage:
            out += [f"{name}@{item}" for item in stage["foreach"]]
        else:
            out.append(name)
    return out


def _split(address: str) -> tuple[str, str | None]:
    name, _, item = address.partition("@")
    return name, item or None


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@cache
def upstream(dvc_yaml: Path, address: str) -> tuple[str, ...]:
    """The stages whose outputs ``address`` reads, directly or through other stages (DVC's DAG, from dvc.yaml)."""
    stages = {a: _resolved_stage(dvc_yaml, *_split(a)) for a in stage_addresses(dvc_yaml)}
    writes = {a: (*s["outs"], *s["metrics"]) for a, s in stages.items()}
    found: set[str] = set()
    todo = [address]
    while todo:
        deps = stages[todo.pop()]["deps"]
        for other, outs in writes.items():
            if other not in found and any(_under(d, o) or _under(o, d) for d in deps for o in outs):
                found.add(other)
                todo.append(other)
    found.discard(address)
    return tuple(sorted(found))


@cache
def lineage_params(dvc_yaml: Path, address: str) -> tuple[str, ...]:
    """The params keys that decide what ``address`` computes: its own and those of every stage upstream of it.
    Two runs with the same values of these keys (and the same code) compute the same outputs, whatever else
    differs; ``lineage_hash`` of their values finds a stage's run of an experiment even where DVC restored it
    from its run cache instead of running it."""
    keys = {k for a in (address, *upstream(dvc_yaml, address)) for k in declared_params(dvc_yaml, *_split(a))}
    return tuple(sorted(k for k in keys if not _profile_key(k)))


# params keys added after runs were recorded, at the value that computes what those runs computed: left out of a
# lineage hash at that value, so that suites keep finding the earlier runs
HASH_NEUTRAL = {
    "data.format": "humanml3d",
    **{
        f"diffusion.{m}.{t}.lr_schedule": "constant"
        for m, t in (("mdm", "train"), ("mld", "train"), ("mld", "vae_train"))
    },
}


def lineage_hash(params: Params, dvc_yaml: Path, address: str) -> str:
    values = {key: _value_at(params, key) for key in lineage_params(dvc_yaml, address)}
    for dotted, neutral in HASH_NEUTRAL.items():
        _drop_if(values, dotted, neutral)
    return params_hash(values)


def _drop_if(values: dict[str, Any], dotted: str, neutral: Any) -> None:
    """Delete ``dotted`` from ``values`` (keyed by declared params keys, each value a nested dict) if it holds
    ``neutral``."""
    for key in values:
        if dotted == key or dotted.startswith(key + "."):
            rest = dotted[len(key) + 1 :]
            path = [key, *rest.split(".")] if rest else [key]
            node: Any = values
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get(path[-1], object()) == neutral:
                del node[path[-1]]
            return


def _profile_key(key: str) -> bool:
    """``profiles.<selected>``: its values are already in the resolved params, under their own keys."""
    return key.partition(".")[0] == "profiles"


def _covers(declared: list[str], key: str) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


class UndeclaredParamError(ConfigError):
    """A stage read a params key that dvc.yaml does not list for it (so DVC would not rerun it on a change)."""


class DeclaredParams:
    """A read-only view of ``Params`` through which a stage sees only the keys dvc.yaml lists for it: reading any
    other raises, so the wiring cannot drift from the code. Fully declared values come back as themselves (the
    typed config objects the library takes); partly declared sections as views."""

    def __init__(self, value: Any, path: str, declared: list[str], address: str) -> None:
        self._value, self._path, self._declared, self._address = value, path, declared, address

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._value, name)
        if name not in type(self._value).model_fields:
            return value  # a method such as stage_seed, which reads only run_stage's own keys
        key = f"{self._path}.{name}" if self._path else name
        if _covers(self._declared, key):
            return value
        if any(d.startswith(key + ".") for d in self._declared):
            return DeclaredParams(value, key, self._declared, self._address)
        raise UndeclaredParamError(
            f"stage {self._address} reads params key {key!r}, which dvc.yaml does not list in its params "
            f"(listed: {', '.join(self._declared)})"
        )


def _value_at(params: Params, key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


# ------------------------------------------------------------------------------------------------- running
def seed_everything(seed: int, threads: int) -> None:
    import torch

    from motionpref.progress import quiet_libraries

    quiet_libraries()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def run_stage(
    name: str, params_path: str | Path = "params.yaml", item: str | None = None, params: Params | None = None
) -> dict[str, Any]:
    module = stage_module(name)
    if (name in ITEM_STAGES) != (item is not None):
        raise ValueError(f"stage {name!r} " + ("needs an item" if item is None else "takes no item"))
    params = params or load_params(params_path)
    address = f"{name}@{item}" if item else name
    if distributed.wants_launch(params.launch) and not distributed.launched():
        if distributed.shards(name, item):
            # every process logs and writes as below, the main one only; the metrics are in MLflow and the files
            distributed.relaunch(params.launch, name, item, str(params_path))
            return {}
        print(f"{address}: runs in one process (it does not shard its work; launch.processes ignored)", file=sys.stderr)
    root = project_root()
    stage = _resolved_stage(root / "dvc.yaml", name, item)
    declared = list(stage["params"])
    reads = {key: _value_at(params, key) for key in declared if not _profile_key(key)}
    tags = {"motionpref.lineage_hash": lineage_hash(params, root / "dvc.yaml", address), **params.suite.tags()}
    seed_everything(params.seed, params.threads)
    is_main = distributed.is_main_process()
    with stage_run(address, params.experiment, reads, tags) if is_main else nullcontext(StageRun.off()) as run:
        ctx = StageContext(root=root, run=run, item=item, launch=params.launch, is_main=is_main)
        metrics = module.run(DeclaredParams(params, "", [*declared, *RUNNER_PARAMS], address), ctx)
        run.log_metrics(metrics)
        # the stage's metrics files, so tables can be rebuilt from MLflow alone (motionpref suite report)
        for path in stage["metrics"] if is_main else ():
            if not (root / path).is_file():
                raise FileNotFoundError(f"stage {address} wrote no {path}, which dvc.yaml names as its metrics")
            run.log_artifact(root / path, OUTPUTS_ARTIFACT)
    return metrics


def main() -> None:
    """``python -m motionpref.pipeline.<name> [item]``: the stage's command, with the CLI's error handling."""
    from motionpref.cli import app

    name = sys.modules["__main__"].__spec__.name.rsplit(".", 1)[-1]
    app([name.replace("_", "-"), *sys.argv[1:]])


_DESCRIBED = {name: _describe(name) for name in _stage_names()}
STAGES: dict[str, str] = {name: help_ for name, (help_, _) in _DESCRIBED.items()}
ITEM_STAGES = {name for name, (_, per_item) in _DESCRIBED.items() if per_item}  # run once per item (evaluate@sft)
