"""dvc.yaml is the one record of the stage wiring: these tests hold it to the code.

- every stage module is a stage of dvc.yaml (and the other way round), run by ``python -m`` on that module;
- a stage's deps cover the code it runs: its module and every motionpref module that module imports, transitively;
- a stage's params cover what its code reads: ``run_stage`` refuses an undeclared key at run time (the smoke
  pipeline in test_pipeline.py runs every stage through it), tested here on a planted drift;
- our resolution of dvc.yaml's params equals DVC's own;
- the seed replicates are replicates/dvc.yaml's, outside the default `dvc repro`, with the root's templates.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from motionpref.config import ConfigError, parse_params
from motionpref.pipeline import (
    ITEM_STAGES,
    REPLICATES,
    STAGES,
    DeclaredParams,
    UndeclaredParamError,
    declared_params,
    dvc_target,
    lineage_params,
    upstream,
)
from motionpref.pipeline import stage_addresses as pipeline_addresses

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DVC_YAML = ROOT / "dvc.yaml"
# modules a stage runs through that cannot change what it writes (neither deps nor followed): params values are
# tracked as params (config), MLflow and progress bars write nothing DVC tracks, the CLI only dispatches to
# run_stage, artifacts only names paths that dvc.yaml's outs name too
NOT_DEPS = {
    "motionpref",
    "motionpref.config",
    "motionpref.tracking",
    "motionpref.progress",
    "motionpref.cli",
    "motionpref.pipeline.artifacts",
}


def dvc_stages() -> dict:
    """Every stage of the repository's pipeline files by its name within its file (unique across the files)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        assert len(stages) == len(repo.index.stages)
        return stages


@pytest.fixture(scope="module")
def resolved() -> dict:
    return dvc_stages()


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(name: str) -> set[str]:
    """The motionpref modules ``name`` imports anywhere in its body (lazy imports included)."""
    path = module_file(name)
    assert path is not None, name
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("motionpref")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("motionpref"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return found


def code_closure(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or current in NOT_DEPS:
            continue
        seen.add(current)
        todo += [m for m in imported_modules(current) if m not in seen]
    return seen


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def stage_addresses() -> list[tuple[str, str | None]]:
    return [(name, item or None) for name, _, item in (a.partition("@") for a in pipeline_addresses(DVC_YAML))]


def test_every_stage_module_is_a_dvc_stage_run_by_its_module(resolved: dict) -> None:
    names = {name for name, _ in stage_addresses()}
    assert names == set(STAGES)
    for address, stage in resolved.items():
        name, _, item = address.partition("@")
        assert (name in ITEM_STAGES) == bool(item), address
        assert stage.cmd.split()[:3] == ["python", "-m", f"motionpref.pipeline.{name}"], address
        assert stage.cmd.split()[3:] == ([item] if item else []), address


@pytest.mark.parametrize(("name", "item"), stage_addresses())
def test_deps_cover_the_code_a_stage_runs(name: str, item: str | None, resolved: dict) -> None:
    stage = resolved[f"{name}@{item}" if item else name]
    deps = [d.def_path for d in stage.deps if type(d).__name__ != "ParamsDependency"]
    modules = code_closure(f"motionpref.pipeline.{name}")
    files = sorted(str(module_file(m).relative_to(ROOT)) for m in modules if module_file(m).stat().st_size)
    missing = [f for f in files if not covered(f, deps)]
    assert not missing, f"{stage.addressing}: dvc.yaml deps miss code the stage runs: {missing}"
    assert covered(f"src/motionpref/pipeline/{name}.py", deps)


def test_the_dep_check_sees_lazy_and_transitive_imports() -> None:
    closure = code_closure("motionpref.pipeline.finetune")
    assert {"motionpref.train.dpo", "motionpref.train.ppo", "motionpref.models.generator"} <= closure
    assert "motionpref.models.tokenizer" in closure  # through models.policy, never named by the stage
    assert not covered("src/motionpref/train/ppo.py", ["src/motionpref/train/dpo.py", "src/motionpref/models"])


@pytest.mark.parametrize(("name", "item"), stage_addresses())
def test_our_params_resolution_is_dvcs(name: str, item: str | None, resolved: dict) -> None:
    stage = resolved[f"{name}@{item}" if item else name]
    theirs = [p for d in stage.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
    assert sorted(declared_params(DVC_YAML, name, item)) == sorted(theirs)


def test_our_upstream_stages_are_dvcs_dag(resolved: dict) -> None:
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to each stage whose outputs it reads
        theirs = {s.name: {d.name for d in nx.descendants(graph, s)} for s in repo.index.stages}
    assert set(theirs) == set(resolved)
    for address, expected in theirs.items():
        assert set(upstream(DVC_YAML, address)) == expected, address


def test_a_stages_lineage_holds_what_changes_its_inputs_and_nothing_else() -> None:
    evaluate_dpo = lineage_params(DVC_YAML, "evaluate@dpo")
    assert {"algo.beta", "algo.dpo", "evaluate.sizes", "policy", "data"} <= set(evaluate_dpo)
    assert "algo.sopo" not in evaluate_dpo and "profiles" not in evaluate_dpo
    assert "algo.beta" not in lineage_params(DVC_YAML, "evaluate@sft")
    assert "algo.beta" not in lineage_params(DVC_YAML, "evaluate@sopo")


def test_a_key_added_at_its_neutral_value_keeps_the_lineage_hashes_runs_were_recorded_with() -> None:
    """data.format and the diffusion policies' lr_schedule came after runs were logged: at humanml3d and
    constant (what those runs computed) their hashes still match."""
    from motionpref.config import params_hash
    from motionpref.pipeline import _value_at, lineage_hash

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(raw)
    before = {key: _value_at(params, key) for key in lineage_params(DVC_YAML, "evaluate@sft")}
    del before["data"]["format"]  # the data section as it was before the key existed
    assert lineage_hash(params, DVC_YAML, "evaluate@sft") == params_hash(before)
    raw["data"]["format"] = "kit"
    assert lineage_hash(parse_params(raw), DVC_YAML, "evaluate@sft") != params_hash(before)

    # a nested key: the diffusion policies' learning-rate schedule (constant before it existed)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for model in ("mld", "mdm"):
        raw["diffusion"][model]["train"]["lr_schedule"] = "constant"
    params = parse_params(raw)
    for address in ("evaluate@mld", "evaluate@mdm"):
        before = {key: _value_at(params, key) for key in lineage_params(DVC_YAML, address)}
        del before["data"]["format"]
        model = address.partition("@")[2]
        for section in ("train", "vae_train") if model == "mld" else ("train",):
            del before[f"diffusion.{model}"][section]["lr_schedule"]
        assert lineage_hash(params, DVC_YAML, address) == params_hash(before), address
        raw["diffusion"][model]["train"]["lr_schedule"] = "cosine"
        assert lineage_hash(parse_params(raw), DVC_YAML, address) != params_hash(before), address


def test_every_stage_lists_what_selects_its_values() -> None:
    for name, item in stage_addresses():
        declared = declared_params(DVC_YAML, name, item)
        assert {"profile", "profiles.cpu", "seed"} <= set(declared), (name, item)


def test_a_stage_tracks_the_selected_profile_alone(tmp_path: Path) -> None:
    # DVC reruns a stage when a params key it lists changes: another profile's edit must not rerun anything
    shutil.copy(DVC_YAML, tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "profile": "smoke"}))
    declared = [k for k in declared_params(tmp_path / "dvc.yaml", "finetune", "dpo") if k.startswith("profiles")]
    assert declared == ["profiles.smoke"]
    assert not [k for k in lineage_params(tmp_path / "dvc.yaml", "finetune@dpo") if k.startswith("profiles")]


def test_the_dpo_familys_beta_reruns_only_dpo() -> None:
    readers = [(n, i) for n, i in stage_addresses() if "algo.beta" in declared_params(DVC_YAML, n, i)]
    assert readers == [("finetune", "dpo"), ("finetune", "dpo_s1"), ("finetune", "dpo_s2")]


def test_an_undeclared_read_fails_and_a_declared_one_passes() -> None:
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    view = DeclaredParams(params, "", ["seed", "algo.dpo", "algo.beta"], "finetune@dpo")
    assert view.algo.dpo is params.algo.dpo  # a declared section comes back as the typed object itself
    assert view.algo.beta == params.algo.beta and view.seed == params.seed
    assert view.stage_seed("x") == params.stage_seed("x")
    with pytest.raises(UndeclaredParamError, match=r"finetune@dpo reads params key 'algo\.sopo'"):
        _ = view.algo.sopo
    with pytest.raises(UndeclaredParamError, match="'data'"):
        _ = view.data


def test_a_planted_drift_in_dvc_yaml_fails_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop ``report`` from the report stage's params in a copy of dvc.yaml: the stage must refuse to read it."""
    from motionpref import pipeline

    spec = yaml.safe_load(DVC_YAML.read_text())
    spec["stages"]["report"]["params"].remove("report")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    pipeline._dvc_stages.cache_clear()
    try:
        with pytest.raises(UndeclaredParamError, match="stage report reads params key 'report'"):
            pipeline.run_stage("report", tmp_path / "params.yaml")
    finally:
        pipeline._dvc_stages.cache_clear()


def test_every_seed_replicate_report_seeds_reads_is_trained_evaluated_and_a_dep(resolved: dict) -> None:
    from motionpref.pipeline import artifacts

    report = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")), "params.yaml").report
    assert report.seeds >= 3 and report.replicated  # the gains across seeds rest on three seeds or more
    for model in report.replicated:
        for k in range(report.seeds):
            name = artifacts.replicate(model, k)
            assert f"finetune@{name}" in resolved and f"evaluate@{name}" in resolved
            assert artifacts.policy(name) in [o.def_path for o in resolved[f"finetune@{name}"].outs]
            assert artifacts.model_metrics(name) in [d.def_path for d in resolved["report_seeds"].deps]


def test_the_default_dvc_repro_leaves_every_replicate_out_and_dvc_targets_name_the_file(resolved: dict) -> None:
    """`dvc repro` without targets runs the root dvc.yaml: no replicate is there, nor read by its report."""
    import re

    from motionpref.pipeline import artifacts

    root = yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"]
    replicates = yaml.safe_load((ROOT / REPLICATES).read_text(encoding="utf-8"))["stages"]
    replicate = re.compile(r"_s\d+$")
    for group in ("finetune", "evaluate"):
        assert not [item for item in root[group]["foreach"] if replicate.search(item)], group
        assert all(replicate.search(item) for item in replicates[group]["foreach"]), group
    assert not [d.def_path for d in resolved["report"].deps if replicate.search(Path(d.def_path).stem)]
    assert artifacts.model_metrics("dpo_s1") in [d.def_path for d in resolved["report_seeds"].deps]
    for name, stage in resolved.items():
        assert dvc_target(DVC_YAML, name) == stage.addressing
    assert dvc_target(DVC_YAML, "finetune@dpo_s1") == "replicates/dvc.yaml:finetune@dpo_s1"


def _pipeline_pair(tmp_path: Path, root: dict, replicates: dict) -> Path:
    (tmp_path / "replicates").mkdir(parents=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": root}))
    (tmp_path / "replicates" / "dvc.yaml").write_text(yaml.safe_dump({"stages": replicates}))
    return tmp_path / "dvc.yaml"


def test_the_replicates_file_must_share_the_roots_template(tmp_path: Path) -> None:
    from motionpref import pipeline

    do = {"cmd": "python -m motionpref.pipeline.finetune ${key}", "deps": ["a", "data/${item.x}"], "outs": ["m/${key}"]}
    good = {"finetune": {"foreach": {"b_s1": {"x": "y"}}, "do": {"wdir": "..", **do}}}
    root = {"finetune": {"foreach": {"b": {"x": "y"}}, "do": do}}
    dvc_yaml = _pipeline_pair(tmp_path, root, good)
    assert pipeline.stage_addresses(dvc_yaml) == ["finetune@b", "finetune@b_s1"]
    assert pipeline._resolved_stage(dvc_yaml, "finetune", "b_s1")["deps"] == ("a", "data/y")
    assert dvc_target(dvc_yaml, "finetune@b_s1") == "replicates/dvc.yaml:finetune@b_s1"
    with pytest.raises(ConfigError, match="no stage finetune@c"):
        dvc_target(dvc_yaml, "finetune@c")
    bad = [
        ({"finetune": {"foreach": {"b_s1": {}}, "do": {**do, "wdir": "..", "deps": ["a"]}}}, "do differs"),
        ({"finetune": {"foreach": {"b_s1": {}}, "do": do}}, "needs wdir: .."),
        ({"finetune": {"foreach": {"b": {}}, "do": {"wdir": "..", **do}}}, "items b are also in"),
        ({"finetune": {"wdir": "..", "cmd": "x"}}, "only foreach items may be split"),
    ]
    for k, (replicates, error) in enumerate(bad):
        dvc_yaml = _pipeline_pair(tmp_path / str(k), root, replicates)
        with pytest.raises(ConfigError, match=error):
            pipeline.stage_addresses(dvc_yaml)


@pytest.mark.parametrize(
    ("item", "expected"), [("dpo", ("dpo", 0)), ("dpo_s2", ("dpo", 2)), ("sopo", ("sopo", 0)), ("sopo_s1", ("sopo", 1))]
)
def test_a_replicate_item_names_its_algorithm_and_seed_offset(item: str, expected: tuple[str, int]) -> None:
    from motionpref.pipeline.finetune import _algorithm

    assert _algorithm(item) == expected


@pytest.mark.parametrize("item", ["ppo", "dpo_s", "dpo_s01", "dpo_sx", "x_s1"])
def test_an_unknown_finetune_item_is_refused(item: str) -> None:
    from motionpref.pipeline.finetune import _algorithm

    with pytest.raises(ValueError, match="unknown algorithm"):
        _algorithm(item)
