"""Experiment suites: named grids of ``-S`` overrides times seeds, run as DVC experiments through DVC's own queue
and tabulated from MLflow alone.

``suites.yaml`` names each suite: ``base`` overrides every run gets, a ``grid`` of keys and values (the variants
are their product), ``seeds`` (each run's ``algo.seed``; the pipeline trains ``report.seeds`` replicates from
it) and the models the table compares with a ``baseline``. ``motionpref suite run NAME`` queues one experiment per
variant and seed (``dvc exp run --queue -S ...`` with only the evaluations the table needs as targets, so DVC runs
those and what they read), starts ``dvc queue start --jobs N`` and follows it; ``motionpref suite report NAME``
writes ``reports/tables/NAME.{md,json}`` from the runs' MLflow records.

How a run is found in MLflow: every stage's run carries ``motionpref.lineage_hash``, the hash of the params that
decide its outputs (its own and those of every stage upstream: ``pipeline.lineage_params``). A suite computes the
hash each of its evaluations must have under the run's params and looks it up, so a stage DVC restored from its
run cache instead of running (the baseline, shared by every variant) is found by the run that computed it, and a
suite killed halfway queues only the runs whose evaluations MLflow does not hold yet. A stage MLflow lacks is
queued without its ``dvc.lock`` entry (``Lock.without``), so DVC runs it even where the committed lock matches.
Matching is by params, not by code: a run recorded before a code change that alters outputs matches too
(``--fresh`` ignores earlier runs).
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from motionpref.config import ConfigError, Params, Section, error_lines, parse_params
from motionpref.pipeline import (
    OUTPUTS_ARTIFACT,
    REPLICATES,
    artifacts,
    dvc_target,
    lineage_hash,
    stage_addresses,
    upstream,
)
from motionpref.report.compare import (
    METRICS,
    PAIRED,
    compare_models,
    signed,
    stability_line,
    t_interval,
    verdict,
)

SUITES_FILE = "suites.yaml"
TABLES_DIR = "reports/tables"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


class PaperResult(Section):
    """What a paper reports for a row: its words or numbers, and the verdict its finding implies. A ``metrics``
    suite checks our seed-replicate gain over the baseline in ``metric`` (better, worse, or within: no
    difference); a ``winrate`` suite the win rate minus the loss rate against the model's base at each
    temperature; a ``curves`` suite the change of the row's metric from its first logged value to its last (rises,
    falls or within). No trend: the finding is not such a direction (a ranking of variants, say) and is shown but
    not checked."""

    result: str = ""
    trend: Literal["better", "worse", "within", "rises", "falls"] | None = None
    metric: Literal["r_precision_top1", "r_precision_top3", "mm_dist", "fid"] = "r_precision_top1"
    # metrics suites: the paper's numbers for the row, metric -> [its baseline's, the row's]; the direction of
    # each (better or worse, as the metric counts) is a trend the table checks, in place of trend and metric
    numbers: dict[Literal["r_precision_top1", "r_precision_top3", "mm_dist", "fid"], tuple[float, float]] = Field(
        default_factory=dict
    )
    # where the paper prints them: the 95% half-widths of its two numbers, metric -> [its baseline's, the row's]
    plus_minus: dict[
        Literal["r_precision_top1", "r_precision_top3", "mm_dist", "fid"],
        tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]],
    ] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _words_or_numbers(self) -> PaperResult:
        if not self.result and not self.numbers:
            raise ValueError("a paper result needs its words (result) or its numbers")
        if self.numbers and self.trend is not None:
            raise ValueError("numbers imply their trends: give numbers or a trend, not both")
        if stray := sorted(set(self.plus_minus) - set(self.numbers)):
            raise ValueError(f"plus_minus: {', '.join(stray)}: an interval needs the metric's numbers")
        return self

    def directions(self) -> dict[str, str]:
        """Each cited metric's direction in the paper: better, worse, or within where the change is none or lies
        inside the 95% half-width of a difference of its two printed intervals, taken as independent
        (sqrt(a^2 + b^2))."""
        out = {}
        for metric, (before, after) in sorted(self.numbers.items(), key=lambda kv: PAIRED.index(kv[0])):
            up = METRICS[metric][1]
            half = math.hypot(*self.plus_minus.get(metric, (0.0, 0.0)))
            within = abs(after - before) <= half if half else after == before
            out[metric] = "within" if within else "better" if (after > before) == up else "worse"
        return out


class CurveSpec(Section):
    """Training curves: MLflow metric histories of one stage against their step."""

    stage: str  # a stage address: train_reward, or finetune@rlhf with its seed replicates finetune@rlhf_s<k>
    metrics: list[str] = Field(min_length=1)  # MLflow metric keys the stage logs with a step


KINDS = ("metrics", "winrate", "curves")
CURVE_TRENDS = ("rises", "falls")


class SuiteSpec(Section):
    description: str = ""
    # metrics: each model's evaluation against the baseline's; winrate: each model's win rates against its base
    # (winrate@<model>, replicated by the seeds); curves: the training curves of one stage
    kind: Literal["metrics", "winrate", "curves"] = "metrics"
    base: dict[str, Any] = Field(default_factory=dict)  # key -> value, every run's overrides
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # key -> values; the variants are their product
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # the value of seed_key in each run
    seed_key: str = "algo.seed"  # the param a run's seed sets (reward.seed: the reward model's replicates)
    models: list[str] = Field(default_factory=list)  # metrics, winrate: evaluate@ or winrate@<model> (+ replicates)
    baseline: str | None = None  # metrics: evaluate@<baseline>, the model each gain is measured against
    curves: CurveSpec | None = None  # curves: the stage and its metrics
    # the paper's result of a row, keyed "<variant> / <row>", "<variant>" or "<row>" (the first that matches); a
    # row is a model, or a curve's metric
    paper: dict[str, PaperResult] = Field(default_factory=dict)
    figure: bool = False  # metrics: also plot each model's R@1 gain against the one grid key's values
    # metrics: also each model's preference-generation time (SoPo's Table 1 "Time"), seconds per caption, from the
    # metrics file of each replicate's finetune stage
    preference_time: bool = False
    # metrics: other metrics suites whose rows follow this one's, each variant against its own suite's baseline
    # (SoPo's Table 4: the token policy's variants beside MDM's); their runs are theirs to run. The paper entries
    # of their rows are this suite's, keyed "<suite>: <variant>"
    join: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _kind_has_its_fields(self) -> SuiteSpec:
        needs = {"metrics": ("models", "baseline"), "winrate": ("models",), "curves": ("curves",)}[self.kind]
        missing = [f for f in needs if not getattr(self, f)]
        if missing:
            raise ValueError(f"a {self.kind} suite needs {' and '.join(missing)}")
        metrics_only = ("figure", "preference_time", "join")
        extra = [f for f in ("models", "baseline", "curves", *metrics_only) if f not in needs and getattr(self, f)]
        if self.kind == "metrics":
            extra = [f for f in extra if f not in metrics_only]
        if extra:
            why = " (it always draws its figure)" if "figure" in extra else ""
            raise ValueError(f"a {self.kind} suite takes no {' or '.join(extra)}{why}")
        curve_trend = self.kind == "curves"
        for key, cited in self.paper.items():
            if cited.numbers and self.kind != "metrics":
                raise ValueError(f"paper.{key}.numbers: only a metrics suite compares metrics with the paper's")
            if cited.trend is not None and (cited.trend in CURVE_TRENDS) != curve_trend:
                allowed = "rises or falls" if curve_trend else "better, worse or within"
                raise ValueError(f"paper.{key}.trend: a {self.kind} suite's trend is {allowed}")
        return self

    @model_validator(mode="after")
    def _figure_has_one_numeric_key(self) -> SuiteSpec:
        numeric = len(self.grid) == 1 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in next(iter(self.grid.values()))
        )
        if self.figure and not numeric:
            raise ValueError("figure: true needs a grid of one key whose values are numbers")
        return self


@dataclass(frozen=True)
class SuiteRun:
    """One DVC experiment of a suite: a variant of the grid at one seed."""

    suite: str
    variant: str
    seed: int
    overrides: dict[str, Any]  # every -S of the experiment, in order
    name: str  # the DVC experiment's name
    params: Params = field(compare=False, repr=False)


# ------------------------------------------------------------------------------------------------ suites.yaml
def load_suites(path: str | Path = SUITES_FILE) -> dict[str, SuiteSpec]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: suites file not found") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("suites"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'suites' mapping of name -> suite")
    suites, problems = {}, []
    for name, spec in raw["suites"].items():
        if not _NAME.match(str(name)):
            problems.append(f"  suites.{name}: a suite name is letters, digits and _")
            continue
        try:
            suites[name] = SuiteSpec.model_validate(spec)
        except ValidationError as e:
            problems += error_lines(e, f"suites.{name}.")
    for name, spec in suites.items():
        bad_joins = []
        for joined in spec.join:
            other = suites.get(joined)
            if other is None or joined == name or other.kind != "metrics" or other.join:
                why = "no such suite" if other is None else "a metrics suite other than itself that joins none"
                bad_joins.append(f"  suites.{name}.join: {joined!r}: {why}")
        problems += bad_joins
        if not bad_joins:  # the paper keys of a joined suite's rows can only be checked once the join is sound
            problems += [f"  suites.{name}.paper.{key}: {why}" for key, why in _unmatched_paper(spec, suites)]
    if problems:
        raise ConfigError("\n".join([f"{path}: invalid suites", *problems]))
    return suites


def _variants(spec: SuiteSpec) -> list[tuple[dict[str, Any], str]]:
    """Each variant of the grid: its values (key -> value) and its label ("base" for an empty grid)."""
    keys = list(spec.grid)
    chosen = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    return [(c, ", ".join(f"{k}={_text(v)}" for k, v in c.items()) or "base") for c in chosen]


def _unmatched_paper(spec: SuiteSpec, suites: Mapping[str, SuiteSpec]) -> list[tuple[str, str]]:
    """The paper keys that name no row of the suite's table (a typo would leave the paper's cell blank)."""
    variants = [v for _, v in _variants(spec)] + [f"{j}: {v}" for j in spec.join for _, v in _variants(suites[j])]
    rows = [*spec.models, *([spec.baseline] if spec.baseline else []), *(spec.curves.metrics if spec.curves else [])]
    rows += [m for j in spec.join for m in suites[j].models]
    known = {*variants, *rows, *(f"{v} / {r}" for v in variants for r in rows)}
    return [(key, "names no variant or row of this suite") for key in spec.paper if key not in known]


def _set(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = raw
    *parents, last = key.split(".")
    for i, part in enumerate(parents):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key!r}: params.yaml has no section {'.'.join(parents[: i + 1])!r}")
    if last not in node:
        raise ConfigError(f"{where}: {key!r}: params.yaml has no such key")
    node[last] = value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", _text(value)).strip("_.")


def suite_runs(name: str, spec: SuiteSpec, params_path: str | Path = "params.yaml") -> list[SuiteRun]:
    """Every experiment of suite ``name``, with the params each resolves to (an override of a key params.yaml
    lacks, or a value it refuses, is an error naming the suite and key)."""
    params_path = Path(params_path)
    raw = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    runs = []
    for chosen, variant in _variants(spec):
        slug = "-".join(f"{k.rsplit('.', 1)[-1]}_{_slug(v)}" for k, v in chosen.items()) or "base"
        for seed in spec.seeds:
            overrides = {**spec.base, **chosen, spec.seed_key: seed}
            overrides.update({"suite.name": name, "suite.variant": variant, "suite.seed": seed})
            resolved = copy.deepcopy(raw)
            for key, value in overrides.items():
                _set(resolved, key, value, f"{SUITES_FILE}: suites.{name}")
            try:
                params = parse_params(resolved, f"{params_path} with suite {name}'s {variant}")
            except ConfigError as e:
                raise ConfigError(f"{SUITES_FILE}: suites.{name}: {e}") from None
            runs.append(SuiteRun(name, variant, seed, overrides, f"{name}-{slug}-s{seed}", params))
    if runs:
        _check_seeds(name, spec, runs[0].params, params_path.parent / "dvc.yaml")
    if len({r.name for r in runs}) != len(runs):
        raise ConfigError(f"{SUITES_FILE}: suites.{name}: two variants give the same experiment name")
    return runs


def replicates(model: str, params: Params, dvc_yaml: Path, stage: str = "evaluate") -> list[str]:
    """The seed replicates of ``model`` the pipeline has ``stage`` stages for (``<model>``, ``<model>_s1``, ... up
    to ``report.seeds``; a model without ``_s<k>`` stages has itself only)."""
    known = set(stage_addresses(dvc_yaml))
    names = [artifacts.replicate(model, k) for k in range(params.report.seeds)]
    return [n for n in names if f"{stage}@{n}" in known]


def _read(spec: SuiteSpec, params: Params, dvc_yaml: Path) -> dict[str, list[str]]:
    """What a run of the suite reads: each row's stage addresses (a model's or a curve's replicates)."""
    if spec.kind == "winrate":  # the pipeline compares replicate 0 only: the suite's seeds replicate it
        return {m: [f"winrate@{m}"] for m in spec.models}
    if spec.kind == "curves":
        assert spec.curves is not None
        stage, _, item = spec.curves.stage.partition("@")
        if not item:
            return {stage: [stage]}
        return {item: [f"{stage}@{r}" for r in replicates(item, params, dvc_yaml, stage)]}
    assert spec.baseline is not None
    return {m: [f"evaluate@{r}" for r in replicates(m, params, dvc_yaml)] for m in (spec.baseline, *spec.models)}


def _finetunes(model: str, params: Params, dvc_yaml: Path) -> list[str]:
    """A model's finetune stages, one per seed replicate (where a table reads its preference-generation time)."""
    return [f"finetune@{r}" for r in replicates(model, params, dvc_yaml, "finetune")]


def targets(spec: SuiteSpec, params: Params, dvc_yaml: Path) -> list[str]:
    """The stages a suite's table reads: for a metrics suite the baseline's evaluation and every seed replicate of
    every model's (the baseline's replicate 0 only), and with ``preference_time`` every replicate's finetune stage;
    the win-rate studies; the curve stage's replicates."""
    read = _read(spec, params, dvc_yaml)
    if spec.kind == "metrics":
        read[spec.baseline] = read[spec.baseline][:1]  # type: ignore[index]
    finetunes = [a for m in spec.models for a in _finetunes(m, params, dvc_yaml)] if spec.preference_time else []
    return [a for addresses in read.values() for a in addresses] + finetunes


def _check_seeds(name: str, spec: SuiteSpec, params: Params, dvc_yaml: Path) -> None:
    """Seeds close enough that one run's replicate is another's (algo.seed 0's ``_s1`` trains with seed 1, as
    algo.seed 1's own model does) would count one training twice and narrow the intervals falsely."""
    known = set(stage_addresses(dvc_yaml))
    seeds = sorted(spec.seeds)
    for row, addresses in _read(spec, params, dvc_yaml).items():
        if not addresses or addresses[0] not in known:
            wanted = addresses[0] if addresses else spec.curves.stage if spec.curves else f"evaluate@{row}"
            raise ConfigError(f"{SUITES_FILE}: suites.{name}: no stage {wanted} in {dvc_yaml}")
        n = len(addresses)
        close = [(a, b) for a, b in zip(seeds, seeds[1:], strict=False) if b - a < n]
        if close and spec.seed_key == "algo.seed":
            a, b = close[0]
            raise ConfigError(
                f"{SUITES_FILE}: suites.{name}.seeds: {a} and {b} overlap: each run trains {row}'s replicates "
                f"algo.seed .. algo.seed + {n - 1}; space the seeds by {n} or more (e.g. 0, {n})"
            )


def hydra_value(value: Any) -> str:
    """A value as DVC's ``-S`` (Hydra's override grammar) reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", value):
        return value
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


# ----------------------------------------------------------------------------------------------------- MLflow
@dataclass
class RunIndex:
    """The finished stage runs of an MLflow experiment: the latest per (stage, lineage hash), and every run's
    duration per (stage, profile) for estimates."""

    latest: dict[tuple[str, str], Any]
    durations: dict[tuple[str, str], list[float]]

    @classmethod
    def load(cls, experiment: str, tracking_uri: str) -> RunIndex:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        found = mlflow.get_experiment_by_name(experiment)
        runs: list[Any] = []
        if found is not None:
            runs = mlflow.search_runs(
                [found.experiment_id],
                "attributes.status = 'FINISHED'",
                output_format="list",
                order_by=["attributes.start_time ASC"],
            )
        latest: dict[tuple[str, str], Any] = {}
        durations: dict[tuple[str, str], list[float]] = {}
        for run in runs:
            tags = run.data.tags
            stage = tags.get("motionpref.stage")
            if stage is None:
                continue
            if "motionpref.lineage_hash" in tags:
                latest[(stage, tags["motionpref.lineage_hash"])] = run
            if run.info.end_time:
                seconds = (run.info.end_time - run.info.start_time) / 1000
                durations.setdefault((stage, tags.get("motionpref.profile", "")), []).append(seconds)
        return cls(latest, durations)

    def find(self, address: str, params: Params, dvc_yaml: Path) -> Any | None:
        return self.latest.get((address, lineage_hash(params, dvc_yaml, address)))

    def estimate(self, address: str, profile: str) -> float | None:
        """Seconds: the median of the recorded runs of ``address`` under ``profile`` (the higher middle one of an
        even count); None without a record."""
        seconds = self.durations.get((address, profile))
        return statistics.median_high(seconds) if seconds else None


@dataclass
class RunPlan:
    run: SuiteRun
    targets: list[str]
    to_run: list[str]  # stages MLflow holds no run of under these params: DVC runs them (or its cache restores)
    seconds: float  # the recorded times of the stages of to_run no earlier run of the plan counted
    unknown: list[str]  # those of them with no recorded time

    @property
    def done(self) -> bool:
        return not any(t in self.to_run for t in self.targets)


def plan(spec: SuiteSpec, runs: Sequence[SuiteRun], index: RunIndex, dvc_yaml: Path) -> list[RunPlan]:
    """Each run's stages that MLflow holds no run of; the time of a stage two runs share (the same lineage) is
    counted once, for the first: DVC's run cache restores it for the second."""
    out, counted = [], set()
    for run in runs:
        wanted = targets(spec, run.params, dvc_yaml)
        stages = sorted({s for t in wanted for s in (t, *upstream(dvc_yaml, t))})
        lineages = {s: lineage_hash(run.params, dvc_yaml, s) for s in stages}
        to_run = [s for s in stages if (s, lineages[s]) not in index.latest]
        done = not any(t in to_run for t in wanted)  # not queued: its stages cost nothing
        new = [] if done else [s for s in to_run if (s, lineages[s]) not in counted]
        counted |= {(s, lineages[s]) for s in new}
        times = {s: index.estimate(s, run.params.profile) for s in new}
        seconds = sum(t for t in times.values() if t is not None)
        out.append(RunPlan(run, wanted, to_run, seconds, [s for s, t in times.items() if t is None]))
    return out


def describe_plan(name: str, plans: Sequence[RunPlan]) -> str:
    pending = [p for p in plans if not p.done]
    lines = [f"suite {name}: {len(plans)} runs, {len(plans) - len(pending)} already in MLflow, {len(pending)} to run"]
    for p in plans:
        if p.done:
            lines.append(f"  {p.run.name}: done")
            continue
        estimate = f"~{p.seconds / 60:.1f} min" + (f", {len(p.unknown)} stages never recorded" if p.unknown else "")
        lines.append(f"  {p.run.name}: {len(p.to_run)} stages to run or restore, {estimate}")
    total = sum(p.seconds for p in pending)
    unknown = sum(len(p.unknown) for p in pending)
    lines.append(
        f"estimated {total / 60:.1f} min from MLflow's median recorded time of each stage under the run's profile"
        + (f", plus {unknown} stages never recorded" if unknown else "")
        + " (DVC's run cache restores a stage it has seen in seconds)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- the queue
def _command(cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout}{done.stderr}")
    return done


def _dvc(args: Sequence[str], root: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _command(["dvc", *args], root, env)


def queue_status(root: Path, names: Iterable[str]) -> dict[str, str]:
    """DVC queue status (Queued | Running | Success | Failed) of the named experiments it knows."""
    from dvc.repo import Repo

    wanted = set(names)
    with Repo(str(root)) as repo:
        return {e["name"]: e["status"] for e in repo.experiments.celery_queue.status() if e.get("name") in wanted}


def enqueue(plans: Sequence[RunPlan], root: Path, lacking: Mapping[str, Sequence[str]]) -> None:
    """Queue each pending run as a DVC experiment, replacing a failed or stale entry of the same name; DVC runs
    the stages of ``lacking[run name]`` (those MLflow holds no run of) even where the lock matches."""
    pending = [p for p in plans if not p.done]
    status = queue_status(root, [p.run.name for p in pending])
    running = [n for n, s in status.items() if s == "Running"]
    if running:
        raise RuntimeError(f"already running in DVC's queue: {', '.join(running)} (dvc queue status)")
    stale = [n for n, s in status.items() if s in ("Queued", "Failed")]
    if stale:
        _dvc(["queue", "remove", *stale], root)
    # an experiment of that name whose evaluations MLflow lacks (its store was reset): run it again
    existing = set(_dvc(["exp", "list", "--name-only"], root).stdout.split())
    again = [p.run.name for p in pending if p.run.name in existing]
    if again:
        _dvc(["exp", "remove", *again], root)
    locks = [Lock.read(path) for path in (root / "dvc.lock", root / REPLICATES.with_suffix(".lock"))]
    for p in pending:
        sets = [a for k, v in p.run.overrides.items() for a in ("-S", f"{k}={hydra_value(v)}")]
        targets = [dvc_target(root / "dvc.yaml", t) for t in p.targets]
        with ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock.without(lacking[p.run.name]))
            _dvc(["exp", "run", "--queue", "-n", p.run.name, *sets, *targets], root)


def rerun_restored(root: Path, restored: Mapping[str, Sequence[str]], dvc_yaml: Path, uri: str) -> None:
    """Run again, forced and each alone, the stages DVC restored from its run cache without running them
    (experiment name -> stages), so that the MLflow store at ``uri`` sees them run. DVC's queue takes no
    --no-run-cache, and a forced queued run would retrain everything upstream; so each experiment's commit is
    checked out in a scratch clone sharing this repository's cache, with the outputs upstream of those stages (the
    experiment's own; `dvc exp apply` would also want every other stage's, which a targeted run never made), and
    only the restored stages run, upstream first."""
    cache = _dvc(["cache", "dir"], root).stdout.strip()
    head = _command(["git", "rev-parse", "HEAD"], root).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="motionpref-rerun-") as tmp:
        for k, (name, stages) in enumerate(restored.items()):
            clone = Path(tmp) / str(k)
            _command(["git", "clone", "-q", "--no-checkout", str(root), str(clone)], Path(tmp))
            ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"  # DVC's ref of experiment `name` queued from HEAD
            _command(["git", "fetch", "-q", "origin", f"{ref}:{ref}"], clone)
            _command(["git", "checkout", "-q", ref], clone)
            _dvc(["cache", "dir", "--local", cache], clone)
            _dvc(["config", "--local", "cache.type", "symlink"], clone)  # read-only inputs: no copies
            inputs = sorted({u for s in stages for u in upstream(dvc_yaml, s)} - set(stages))
            if inputs:
                _dvc(["checkout", "-q", *(dvc_target(dvc_yaml, s) for s in inputs)], clone)
            # a stage has more stages upstream than any stage upstream of it: a topological order
            ordered = sorted(stages, key=lambda s: (len(upstream(dvc_yaml, s)), s))
            print(f"  {name}: {', '.join(ordered)}", flush=True)
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DVC_EXP_NAME": name}
            _dvc(["repro", "--force", "--single-item", *(dvc_target(dvc_yaml, s) for s in ordered)], clone, env)


@dataclass(frozen=True)
class Lock:
    """A ``dvc.lock`` of the workspace (the root's or the replicates') as read once: its bytes, to put back exactly,
    and its parsed stage entries."""

    path: Path
    original: bytes | None
    data: Any

    @classmethod
    def read(cls, path: Path) -> Lock:
        original = path.read_bytes() if path.exists() else None
        return cls(path, original, yaml.safe_load(original) if original else None)

    @contextmanager
    def without(self, stages: Iterable[str]) -> Iterator[None]:
        """Let the lock file lack the entries of ``stages`` while the block queues an experiment (DVC stashes the
        workspace, lock included), then put the file back byte for byte.

        Why: DVC skips a stage whose lock entry matches its inputs without running its command, and a skipped
        stage leaves no MLflow run. The committed lock's stages match on a machine that reproduces them bit for
        bit, so a stage MLflow lacks must look new to the queued copy. (A stage in DVC's run cache is still
        restored, not run: ``main_run`` names any such stage afterwards.)"""
        from motionpref.io import write_bytes, write_text

        entries = self.data.get("stages", {}) if isinstance(self.data, dict) else {}
        drop = set(stages) & set(entries)
        if not drop:
            yield
            return
        kept = {name: entry for name, entry in entries.items() if name not in drop}
        write_text(self.path, yaml.safe_dump({**self.data, "stages": kept}, sort_keys=False))
        try:
            yield
        finally:
            write_bytes(self.path, self.original)


def stage_progress(experiment_id: str, name: str, since_ms: int) -> str:
    """Where the queued run ``name`` is, from the MLflow runs its stages opened since ``since_ms`` (a stage DVC
    restores from its run cache opens none; an earlier attempt's runs are older)."""
    import mlflow

    runs = mlflow.search_runs(
        [experiment_id],
        f"tags.`dvc.exp_name` = '{name}' and attributes.start_time >= {since_ms}",
        output_format="list",
    )
    now = sorted(r.data.tags.get("motionpref.stage", "?") for r in runs if r.info.status == "RUNNING")
    finished = sum(r.info.status == "FINISHED" for r in runs)
    return f"{name}: {', '.join(now) or 'between stages'}, {finished} stages finished"


def follow(plans: Sequence[RunPlan], root: Path, jobs: int, experiment_id: str, poll: float = 15.0) -> dict[str, str]:
    """Start DVC's queue workers and report progress (each running run's stage) until every queued run of ``plans``
    has ended; returns each run's final status."""
    names = [p.run.name for p in plans if not p.done]
    since_ms = int(time.time() * 1000)
    # not through a pipe: the workers DVC leaves running would hold it open, and reading it would wait for them
    started = subprocess.run(
        ["dvc", "queue", "start", "--jobs", str(jobs)],
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if started.returncode != 0:
        raise RuntimeError(f"dvc queue start --jobs {jobs} failed (exit {started.returncode}); try it in {root}")
    start = time.monotonic()
    last = ""
    while True:
        status = queue_status(root, names)
        counts = {s: sum(v == s for v in status.values()) for s in ("Queued", "Running", "Success", "Failed")}
        line = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
        running = [stage_progress(experiment_id, n, since_ms) for n, s in status.items() if s == "Running"]
        line += f" (running: {'; '.join(running)})" if running else ""
        if line != last:
            elapsed = int(time.monotonic() - start)
            print(f"[{elapsed // 60}:{elapsed % 60:02d}] {line}", flush=True)
            last = line
        if not counts["Queued"] and not counts["Running"]:
            return status
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------------- tables
def _artifact_json(client: Any, run: Any, name: str, address: str) -> dict[str, Any]:
    """A metrics file ``run_stage`` logged under ``outputs/`` in the MLflow run of ``address``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run.info.run_id, f"{OUTPUTS_ARTIFACT}/{name}", tmp)
        except Exception as e:  # MLflow raises its own and OSError kinds for a missing artifact
            raise ConfigError(
                f"MLflow run {run.info.run_id} ({address}) has no {OUTPUTS_ARTIFACT}/{name}: {e}"
            ) from None
        return json.loads(Path(local).read_text(encoding="utf-8"))


Hit = Callable[[SuiteRun, str], Any]  # (run, stage address) -> that stage's MLflow run, recorded as a source


def _too_few(name: str, rows: Mapping[str, Sequence[Any]], what: str) -> None:
    few = [row for row, reps in rows.items() if len(reps) < 2]
    if few:
        raise ConfigError(
            f"suite {name}: {', '.join(few)}: {what} across seeds needs 2 or more replicates; give the suite more seeds"
        )


def _metric_rows(name: str, spec: SuiteSpec, vruns: Sequence[SuiteRun], hit: Hit, client: Any, dvc_yaml: Path) -> Any:
    """Each model against the baseline, across every seed replicate of every run of the variant."""

    def report(run: SuiteRun, model: str) -> dict[str, Any]:
        address = f"evaluate@{model}"
        return _artifact_json(client, hit(run, address), Path(artifacts.model_metrics(model)).name, address)

    assert spec.baseline is not None
    reports = {m: [report(r, k) for r in vruns for k in replicates(m, r.params, dvc_yaml)] for m in spec.models}
    _too_few(name, reports, "a gain")
    metrics = {spec.baseline: report(vruns[0], spec.baseline), **{m: reps[0] for m, reps in reports.items()}}
    comparison = compare_models(metrics, spec.baseline, None, reports)
    if spec.preference_time:
        comparison["preference_time"] = {m: _preference_time(vruns, m, hit, client, dvc_yaml) for m in spec.models}
    return comparison


def _preference_time(vruns: Sequence[SuiteRun], model: str, hit: Hit, client: Any, dvc_yaml: Path) -> dict[str, Any]:
    """The seconds per caption a model's finetuning spent generating its preferences, each replicate's and their
    mean (a wall-clock time: it depends on the machine and on what else ran beside it)."""
    per_seed = []
    for run in vruns:
        for address in _finetunes(model, run.params, dvc_yaml):
            item = address.partition("@")[2]
            report = _artifact_json(client, hit(run, address), Path(artifacts.finetune_report(item)).name, address)
            if "preference_seconds_per_caption" not in report:
                raise ConfigError(
                    f"{address}: its metrics file has no preference_seconds_per_caption (only SoPo's and MoDiPO's "
                    "diffusion finetuning generates preferences); drop preference_time from the suite"
                )
            per_seed.append(report["preference_seconds_per_caption"])
    return {"seconds_per_caption": sum(per_seed) / len(per_seed), "per_seed": per_seed}


def _winrate_rows(name: str, spec: SuiteSpec, vruns: Sequence[SuiteRun], hit: Hit, client: Any, dvc_yaml: Path) -> Any:
    """Each model's win, tie and loss rates against its base at each temperature, one study per seed: means and
    the win rate minus the loss rate (paired within a study) with its t interval across the seeds."""
    out = {}
    for model in spec.models:
        address = f"winrate@{model}"
        name_json = Path(artifacts.winrate_report(model, "json")).name
        studies = [_artifact_json(client, hit(r, address), name_json, address) for r in vruns]
        _too_few(name, {model: studies}, "a win rate")
        cells: dict[float, list[Mapping[str, Any]]] = {}
        for study in studies:
            for cell in study["cells"]:
                if cell["model"] == model:
                    cells.setdefault(float(cell["temperature"]), []).append(cell)
        rows = []
        for temperature, group in sorted(cells.items()):
            if len(group) != len(studies):
                raise ConfigError(f"suite {name}: {address}: temperature {temperature} is missing from some seeds")
            rates = {o: [c[o]["rate"] for c in group] for o in ("win", "tie", "loss")}
            diff = [w - loss for w, loss in zip(rates["win"], rates["loss"], strict=True)]
            gap = t_interval(diff)
            rows.append(
                {
                    "temperature": temperature,
                    "prompts": [c["n"] for c in group],
                    **{o: {**t_interval(v), "per_seed": v} for o, v in rates.items()},
                    "win_minus_loss": {**gap, "per_seed": diff, "verdict": verdict(gap, True)},
                }
            )
        out[model] = {"baseline": studies[0].get("baseline", "sft"), "temperatures": rows}
    return out


def _curve_rows(name: str, spec: SuiteSpec, vruns: Sequence[SuiteRun], hit: Hit, client: Any, dvc_yaml: Path) -> Any:
    """Each metric's history in every replicate (every run's seed, and the stage's own _s<k> replicates), and its
    change from the first logged value to the last with its t interval across the replicates."""
    assert spec.curves is not None
    series: dict[str, list[dict[str, Any]]] = {m: [] for m in spec.curves.metrics}
    for run in vruns:
        addresses = targets(spec, run.params, dvc_yaml)
        for address in addresses:
            # what tells this replicate from the others in a figure's legend: the run's seed, the stage's replicate
            label = ", ".join(
                [f"{spec.seed_key} {run.seed}"] * (len(vruns) > 1) + [address.split("@")[-1]] * (len(addresses) > 1)
            )
            mlflow_run = hit(run, address)
            for metric in spec.curves.metrics:
                # several values at one step (a retried log) keep the last written
                points = sorted(
                    (m.step, m.timestamp, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, metric)
                )
                if not points:
                    raise ConfigError(
                        f"suite {name}: MLflow run {mlflow_run.info.run_id} ({address}) logged no {metric}"
                    )
                by_step = {step: value for step, _, value in points}
                series[metric].append(
                    {
                        "replicate": f"{run.name}:{address}",
                        "label": label,
                        "steps": list(by_step),
                        "values": list(by_step.values()),
                    }
                )
    _too_few(name, series, "a curve's change")
    rows = {}
    for metric, curves in series.items():
        change = [c["values"][-1] - c["values"][0] for c in curves]
        gap = t_interval(change)
        rows[metric] = {
            "first": t_interval([c["values"][0] for c in curves]),
            "last": t_interval([c["values"][-1] for c in curves]),
            "change": {
                **gap,
                "per_seed": change,
                "verdict": {"better": "rises", "worse": "falls"}.get(verdict(gap, True), "within"),
            },
            "series": curves,
        }
    return rows


def suite_table(
    name: str, spec: SuiteSpec, runs: Sequence[SuiteRun], index: RunIndex, client: Any, dvc_yaml: Path
) -> dict[str, Any]:
    """The suite's rows for each variant, from the metrics files and metric histories its stages logged in MLflow
    (``run_stage`` logs them): its models' gains over the baseline, their win rates, or a stage's curves."""

    variants: dict[str, list[SuiteRun]] = {}
    for run in runs:
        variants.setdefault(run.variant, []).append(run)
    hits = {
        (run.name, a): index.find(a, run.params, dvc_yaml) for run in runs for a in targets(spec, run.params, dvc_yaml)
    }
    missing = [f"{name}: {address}" for (name, address), hit in hits.items() if hit is None]
    if missing:
        raise ConfigError(
            f"suite {name}: MLflow holds no run of " + "; ".join(missing) + f" (motionpref suite run {name})"
        )
    sources: dict[str, dict[str, Any]] = {}

    def hit(run: SuiteRun, address: str) -> Any:
        found = hits[(run.name, address)]
        sources[f"{run.name}:{address}"] = {
            "run_id": found.info.run_id,
            "commit": found.data.tags.get("mlflow.source.git.commit"),
        }
        return found

    build = {"metrics": _metric_rows, "winrate": _winrate_rows, "curves": _curve_rows}[spec.kind]
    return {
        "suite": name,
        "kind": spec.kind,
        "description": spec.description,
        "baseline": spec.baseline,
        "variants": {variant: build(name, spec, vruns, hit, client, dvc_yaml) for variant, vruns in variants.items()},
        "paper": {v: r.model_dump() for v, r in spec.paper.items()},
        "sources": sources,
    }


def trend_holds(cited: Mapping[str, Any], got: str, label: str) -> str:
    """Whether our verdict (``got``, of the quantity ``label`` names) is the one the paper's finding implies;
    empty where the paper gives no direction."""
    if cited.get("trend") is None:
        return ""
    return f"{'yes' if got == cited['trend'] else 'no'} ({label} {got})"


def _cited(paper: Mapping[str, Any], variant: str, row: str) -> Mapping[str, Any]:
    """The paper's result for a row: keyed "<variant> / <row>", "<variant>" or "<row>", the first that is there."""
    return paper.get(f"{variant} / {row}") or paper.get(variant) or paper.get(row) or {}


def _paper_cells(paper: Mapping[str, Any], cited: Mapping[str, Any], holds: str) -> str:
    """The paper and holds cells of a row, none when the suite cites no paper: the paper's numbers (each metric's
    baseline -> row), then its words."""
    if not paper:
        return ""
    cited_numbers, pm = cited.get("numbers", {}), cited.get("plus_minus", {})

    def number(m: str, i: int) -> str:
        return f"{cited_numbers[m][i]:.3f}" + (f" ± {pm[m][i]:.3f}" if m in pm else "")

    numbers = ", ".join(f"{METRICS[m][0]} {number(m, 0)} → {number(m, 1)}" for m in PAIRED if m in cited_numbers)
    words = cited.get("result", "")
    return f" {f'{numbers} ({words})' if numbers and words else numbers or words} | {holds} |"


def _metric_holds(cited: Mapping[str, Any], gains: Mapping[str, Any]) -> str:
    """Whether our seed-replicate verdicts have the directions the paper's numbers (or its stated trend) imply."""
    if cited.get("numbers"):
        return ", ".join(
            f"{METRICS[m][0]} {'yes' if gains[m]['verdict'] == theirs else 'no'} ({gains[m]['verdict']})"
            for m, theirs in PaperResult.model_validate(cited).directions().items()
        )
    metric = cited.get("metric", "r_precision_top1")
    return trend_holds(cited, gains[metric]["verdict"], METRICS[metric][0])


def _header(table: Mapping[str, Any], how: str, labels: Sequence[str], numbers: Sequence[str]) -> list[str]:
    """The table's title, its reading guide and its head: the ``labels`` columns left-aligned, the ``numbers``
    columns right-aligned, then the paper's two when the suite cites it."""
    paper = bool(table["paper"])
    out = [f"# Suite `{table['suite']}`", ""]
    if table["description"]:
        out += [table["description"], ""]
    holds = " paper: the paper's result for the row; holds: whether ours gets the verdict the paper's finding implies."
    if any(c.get("numbers") for c in table["paper"].values()):
        holds += (
            " Numbers are the paper's (docs/papers.md), its baseline → the row; the verdict each implies is the sign "
            "of its change, or within where the paper prints each number's 95% interval (±) and the change lies "
            "inside the difference's, sqrt(a² + b²) (the papers print no interval for a difference)."
        )
    out += [how + (holds if paper else "") + " Built from MLflow by `motionpref suite report`.", ""]
    cited = ("paper", "holds") if paper else ()
    columns = [*labels, *numbers, *cited]
    return [
        *out,
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(labels) + "---:|" * len(numbers) + "---|" * len(cited),
    ]


def _seconds(x: float) -> str:
    """At least 3 decimals, more below 0.1 s so that 3 significant figures show (MLD's 0.0026 s, not 0.003)."""
    return f"{x:.{max(3, 2 - math.floor(math.log10(abs(x))))}f}" if x else "0.000"


def _timed_cell(comparison: Mapping[str, Any], model: str) -> str:
    timed = comparison.get("preference_time", {}).get(model)
    return _seconds(timed["seconds_per_caption"]) if timed else ""


def _metrics_markdown(table: Mapping[str, Any]) -> list[str]:
    paper = table["paper"]
    timed = any("preference_time" in c for c in table["variants"].values())
    baselines = list(dict.fromkeys(c["baseline"] for c in table["variants"].values()))
    over = (
        f"`{baselines[0]}`"
        if len(baselines) == 1
        else "the baseline its variant lists first (" + ", ".join(f"`{b}`" for b in baselines) + ")"
    )
    out = _header(
        table,
        "Test split, first samples. R@1 and FID: each model's first seed replicate (mean over the evaluation's "
        f"replications); each Δ is the gain over {over} on the same captions, crops and batches (a mean paired "
        "difference per seed replicate), mean ± 95% Student t interval across the replicates; ▲ better or ▼ worse "
        "only when the interval excludes 0."
        + (
            " s/caption: the wall-clock seconds per caption each finetuning spent sampling and scoring its "
            'preferences (SoPo\'s Table 1 "Time"), mean across the replicates, on the machine that ran them.'
            if timed
            else ""
        ),
        ["variant", "model"],
        [
            "seeds",
            "R@1",
            "FID",
            *(f"Δ {METRICS[m][0]}" for m in PAIRED),
            "p (Δ R@1)",
            *(["s/caption"] if timed else []),
        ],
    )
    for variant, comparison in table["variants"].items():
        baseline = comparison["baseline"]
        base = comparison["metrics"][baseline]
        out.append(
            f"| {variant} | {baseline} | 1 | {base['r_precision_top1']['mean']:.3f} | {base['fid']['mean']:.3f} |"
            + " |" * (len(PAIRED) + 1 + timed)
            + (" | |" if paper else "")
        )
        for model, gains in comparison["seed_gains"].items():
            r1 = gains["r_precision_top1"]
            own = comparison["metrics"][model]
            cited = _cited(paper, variant, model)
            out.append(
                f"| {variant} | {model} | {len(r1['per_seed'])} | {own['r_precision_top1']['mean']:.3f} | "
                f"{own['fid']['mean']:.3f} | "
                + " | ".join(signed(gains[m]) for m in PAIRED)
                + f" | {r1['p']:.3f} |"
                + (f" {_timed_cell(comparison, model)} |" if timed else "")
                + _paper_cells(paper, cited, _metric_holds(cited, gains))
            )
    for variant, comparison in table["variants"].items():
        out += ["", (f"{variant}: " if len(table["variants"]) > 1 else "") + stability_line(comparison["stability"])]
    return out


def _winrate_markdown(table: Mapping[str, Any]) -> list[str]:
    paper = table["paper"]
    out = _header(
        table,
        "Held-out test-program prompts, first samples, judged by the pipeline's labelers (`winrate@<model>`, one study "
        "per seed): win, tie and loss rates against the model each started from, means across the seeds; win − loss "
        "is the mean of each study's win rate minus its loss rate ± 95% Student t interval across the seeds; ▲ or ▼ "
        "only when the interval excludes 0.",
        ["variant", "model", "against"],
        ["temperature", "seeds", "win", "tie", "loss", "win − loss", "p"],
    )
    for variant, models in table["variants"].items():
        for model, row in models.items():
            cited = _cited(paper, variant, model)
            for cell in row["temperatures"]:
                gap = cell["win_minus_loss"]
                out.append(
                    f"| {variant} | {model} | {row['baseline']} | {cell['temperature']:g} | {gap['n']} | "
                    + " | ".join(f"{100 * cell[o]['mean']:.1f}%" for o in ("win", "tie", "loss"))
                    + f" | {signed(gap)} | {gap['p']:.3f} |"
                    + _paper_cells(paper, cited, trend_holds(cited, gap["verdict"], "win − loss"))
                )
    return out


def _curves_markdown(table: Mapping[str, Any]) -> list[str]:
    paper = table["paper"]
    out = _header(
        table,
        "Training curves as the stage logged them to MLflow, every seed replicate: the first and last logged values "
        "(means across the replicates) and the change from first to last, mean ± 95% Student t interval across the "
        "replicates; ▲ rises or ▼ falls only when the interval excludes 0. The figure draws every replicate.",
        ["variant", "metric"],
        ["replicates", "steps", "first", "last", "last − first", "p"],
    )
    for variant, metrics in table["variants"].items():
        for metric, row in metrics.items():
            change = row["change"]
            steps = sorted({len(c["steps"]) for c in row["series"]})
            cited = _cited(paper, variant, metric)
            out.append(
                f"| {variant} | {metric} | {change['n']} | {'/'.join(map(str, steps))} | {row['first']['mean']:.3f} | "
                f"{row['last']['mean']:.3f} | {signed(change)} | {change['p']:.3f} |"
                + _paper_cells(paper, cited, trend_holds(cited, change["verdict"], "last − first"))
            )
    return out


def table_markdown(table: Mapping[str, Any]) -> str:
    kind = table.get("kind", "metrics")
    lines = {"metrics": _metrics_markdown, "winrate": _winrate_markdown, "curves": _curves_markdown}[kind](table)
    return "\n".join(lines) + "\n"


def _figure(panels: int) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.2), dpi=120, squeeze=False)
    return fig, axes[0]


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from motionpref.io import write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def gain_figure(table: Mapping[str, Any], key: str, values: Sequence[Any], path: Path) -> None:
    """Each model's R@1 gain over the baseline (mean and 95% t interval across seeds) against the values of the
    suite's one grid key, as the papers plot an ablation (InstructMotion Fig. 5: beta)."""
    fig, (ax,) = _figure(1)
    variants = list(table["variants"].values())
    for model in variants[0]["seed_gains"]:
        gains = [v["seed_gains"][model]["r_precision_top1"] for v in variants]
        ax.errorbar(
            values, [g["mean"] for g in gains], yerr=[g["ci95"] for g in gains], marker="o", capsize=3, label=model
        )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(key)
    ax.set_ylabel(f"Δ R@1 over {table['baseline']}")
    ax.set_title(f"suite {table['suite']}")
    ax.legend()
    _save(fig, path)


def _label(table: Mapping[str, Any], variant: str, row: str) -> str:
    return row if len(table["variants"]) == 1 else f"{variant}: {row}"


def winrate_figure(table: Mapping[str, Any], path: Path) -> None:
    """Win (solid) and loss (dashed) rates against temperature, mean and 95% t interval across seeds, as
    InstructMotion's Fig. 3 plots its win rates."""
    fig, (ax,) = _figure(1)
    for variant, models in table["variants"].items():
        for model, row in models.items():
            cells = row["temperatures"]
            x = [c["temperature"] for c in cells]
            line = ax.errorbar(
                x,
                [c["win"]["mean"] for c in cells],
                yerr=[c["win"]["ci95"] for c in cells],
                marker="o",
                capsize=3,
                label=f"{_label(table, variant, model)} wins",
            )
            ax.errorbar(
                x,
                [c["loss"]["mean"] for c in cells],
                yerr=[c["loss"]["ci95"] for c in cells],
                marker="s",
                capsize=3,
                ls="--",
                color=line[0].get_color(),
                label=f"{_label(table, variant, model)} loses",
            )
    ax.set_xlabel("temperature")
    ax.set_ylabel("share of prompts")
    ax.set_title(f"suite {table['suite']}")
    ax.legend(fontsize=7)
    _save(fig, path)


def curves_figure(table: Mapping[str, Any], path: Path) -> None:
    """One panel per metric, every replicate's curve against its step."""
    metrics = list(next(iter(table["variants"].values())))
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for variant, rows in table["variants"].items():
            for curve in rows[metric]["series"]:
                ax.plot(
                    curve["steps"],
                    curve["values"],
                    marker=".",
                    lw=1,
                    label=_label(table, variant, curve["label"]),
                )
        ax.set_xlabel("step")
        ax.set_title(metric)
    axes[0].legend(fontsize=6)
    _save(fig, path)


def write_table(root: Path, table: Mapping[str, Any], spec: SuiteSpec) -> Path:
    """reports/tables/<suite>.{json,md}, and .png where the suite is a paper's figure: a metrics suite over one
    numeric key, every win-rate and curves suite."""
    from motionpref.io import write_json, write_text

    md = root / TABLES_DIR / f"{table['suite']}.md"
    if spec.kind == "winrate":
        winrate_figure(table, md.with_suffix(".png"))
    elif spec.kind == "curves":
        curves_figure(table, md.with_suffix(".png"))
    elif spec.figure:
        ((key, values),) = spec.grid.items()  # SuiteSpec checked: one key of numbers
        gain_figure(table, key, values, md.with_suffix(".png"))
    write_json(md.with_suffix(".json"), table)
    write_text(md, table_markdown(table))
    return md


def main_run(name: str, root: Path, jobs: int, dry_run: bool, fresh: bool) -> int:
    from motionpref.config import load_params
    from motionpref.tracking import tracking_uri

    spec = _spec(name, root)
    runs = suite_runs(name, spec, root / "params.yaml")
    experiment = load_params(root / "params.yaml").experiment
    uri = tracking_uri()
    known = plan(spec, runs, RunIndex.load(experiment, uri), root / "dvc.yaml")
    plans = plan(spec, runs, RunIndex({}, {}), root / "dvc.yaml") if fresh else known
    print(describe_plan(name, plans), flush=True)
    for joined in spec.join:
        print(f"its table also shows suite {joined}'s rows: motionpref suite run {joined} runs them", flush=True)
    if dry_run or all(p.done for p in plans):
        return 0
    import mlflow

    # the queue's runs execute in DVC's temporary copies: make them log here, and create the experiment here so
    # its artifact root is this checkout's, not a temporary folder's
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    os.environ["MLFLOW_TRACKING_URI"] = uri
    # what MLflow lacks, also under --fresh: a stage whose lock entry matches is DVC's to skip (its code unchanged)
    lacking = {p.run.name: p.to_run for p in known}
    enqueue(plans, root, lacking)
    status = follow(plans, root, jobs, experiment_id)
    failed = sorted(n for n, s in status.items() if s != "Success")
    if failed:
        print(
            f"failed: {', '.join(failed)}; see `dvc queue logs NAME`; rerun `motionpref suite run {name}` to "
            "retry them (finished runs are kept)",
            file=sys.stderr,
        )
        return 1
    restored = _unlogged(spec, runs, experiment, uri, root)
    if restored:
        print(
            "DVC restored stages from its run cache without running them, so MLflow never saw them run; running "
            "them again, each alone, in a scratch clone sharing this cache:",
            flush=True,
        )
        rerun_restored(root, restored, root / "dvc.yaml", uri)
        restored = _unlogged(spec, runs, experiment, uri, root)
    if restored:
        missing = sorted({s for stages in restored.values() for s in stages})
        print(f"DVC finished every run, but MLflow still holds no run of {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"suite {name} done: motionpref suite report {name}")
    return 0


def _unlogged(spec: SuiteSpec, runs: Sequence[SuiteRun], experiment: str, uri: str, root: Path) -> dict[str, list[str]]:
    """The runs whose table rows MLflow still lacks after the queue: run name -> the stages the table reads that
    it lacks (not those upstream, which the table never reads)."""
    after = plan(spec, runs, RunIndex.load(experiment, uri), root / "dvc.yaml")
    lacking = {p.run.name: [t for t in p.targets if t in p.to_run] for p in after}
    return {name: stages for name, stages in lacking.items() if stages}


def _spec(name: str, root: Path, suites: Mapping[str, SuiteSpec] | None = None) -> SuiteSpec:
    suites = load_suites(root / SUITES_FILE) if suites is None else suites
    if name not in suites:
        raise ConfigError(f"{root / SUITES_FILE}: no suite {name!r}; suites: {', '.join(suites)}")
    return suites[name]


def main_report(name: str, root: Path) -> Path:
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file read is noise here

    from motionpref.config import load_params
    from motionpref.tracking import tracking_uri

    suites = load_suites(root / SUITES_FILE)
    spec = _spec(name, root, suites)
    uri = tracking_uri()
    index = RunIndex.load(load_params(root / "params.yaml").experiment, uri)
    client = mlflow.MlflowClient(uri)

    def table_of(suite: str) -> dict[str, Any]:
        runs = suite_runs(suite, suites[suite], root / "params.yaml")
        return suite_table(suite, suites[suite], runs, index, client, root / "dvc.yaml")

    table = table_of(name)
    for joined in spec.join:
        rows = table_of(joined)
        table["variants"] |= {f"{joined}: {variant}": c for variant, c in rows["variants"].items()}
        table["sources"] |= rows["sources"]
    return write_table(root, table, spec)
