"""Experiment suites: the runs a suite names, the -S overrides DVC reads back, and tables built from MLflow alone."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from command_fixtures import BIN, isolated_env
from command_fixtures import run as run_command
from suite_fixtures import (
    BASE_R1,
    BETA,
    GAINS,
    fill_store,
    log_evaluation,
    log_stage,
    make_project,
    winrate_study,
    write_suites,
)

from motionpref.config import ConfigError, parse_params
from motionpref.pipeline import lineage_hash
from motionpref.suites import (
    PaperResult,
    RunIndex,
    hydra_value,
    load_suites,
    main_report,
    plan,
    stage_progress,
    suite_runs,
    targets,
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with its own suites.yaml and MLflow store (artifacts under its mlruns/)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path)


def test_a_suite_is_its_grids_product_at_every_seed(project: Path) -> None:
    write_suites(
        project,
        {
            "s": {
                **BETA,
                "grid": {"algo.beta": [0.1, 0.2], "algo.dpo.loss": ["ipo", "kto"]},
                "seeds": [0, 3],
                "base": {"evaluate.judge_texts": 7},
            }
        },
    )
    runs = suite_runs("s", load_suites(project / "suites.yaml")["s"], project / "params.yaml")
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    run = next(r for r in runs if r.variant == "algo.beta=0.2, algo.dpo.loss=kto" and r.seed == 3)
    assert run.name == "s-beta_0.2-loss_kto-s3"
    p = run.params
    assert (p.algo.beta, p.algo.dpo.loss, p.algo.seed, p.evaluate.judge_texts) == (0.2, "kto", 3, 7)
    assert (p.suite.name, p.suite.variant, p.suite.seed) == ("s", "algo.beta=0.2, algo.dpo.loss=kto", 3)
    # what the table reads: the baseline and every seed replicate of the model (report.seeds of them)
    assert targets(load_suites(project / "suites.yaml")["s"], p, project / "dvc.yaml") == [
        "evaluate@sft",
        "evaluate@dpo",
        "evaluate@dpo_s1",
        "evaluate@dpo_s2",
    ]


def test_a_model_without_replicate_stages_is_replicated_by_the_suites_seeds(project: Path) -> None:
    spec = {"grid": {}, "seeds": [0, 3, 6], "models": ["mdm_sopo", "mdm_modipo"], "baseline": "mdm"}
    write_suites(project, {"t": spec})
    runs = suite_runs("t", load_suites(project / "suites.yaml")["t"], project / "params.yaml")
    assert [r.seed for r in runs] == [0, 3, 6] and {r.variant for r in runs} == {"base"}
    assert targets(load_suites(project / "suites.yaml")["t"], runs[0].params, project / "dvc.yaml") == [
        "evaluate@mdm",
        "evaluate@mdm_sopo",
        "evaluate@mdm_sopo_s1",
        "evaluate@mdm_sopo_s2",
        "evaluate@mdm_modipo",
    ]


def test_dvcs_own_set_param_reads_the_overrides_back_as_the_suite_resolved_them(project: Path) -> None:
    from dvc.utils.hydra import apply_overrides

    write_suites(
        project,
        {
            "s": {
                **BETA,
                "grid": {
                    "winrate.temperatures": [[1.0, 1.5]],
                    "pairs.sampling.top_k": [None],
                    "prompts.llm": [None],
                    "algo.dpo.data.degrees": ["much_better"],
                },
                "base": {"profile": "smoke", "experiment": "a run: with, odd = characters"},
            }
        },
    )
    (run,) = suite_runs("s", load_suites(project / "suites.yaml")["s"], project / "params.yaml")
    apply_overrides(project / "params.yaml", [f"{k}={hydra_value(v)}" for k, v in run.overrides.items()])
    assert parse_params(yaml.safe_load((project / "params.yaml").read_text())) == run.params


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**BETA, "grid": {"algo.betta": [0.1]}}, "suites.s: 'algo.betta': params.yaml has no such key"),
        ({**BETA, "grid": {"algo.nope.beta": [0.1]}}, "params.yaml has no section 'algo.nope'"),
        ({**BETA, "seed": [0]}, "suites.s.seed: unknown key"),
        ({**BETA, "grid": {"algo.dpo.loss": ["dpo"]}}, "algo.dpo.loss"),
        ({k: v for k, v in BETA.items() if k != "models"}, "a metrics suite needs models"),
        ({**BETA, "grid": {"algo.dpo.loss": ["ipo", "kto"]}, "figure": True}, "one key whose values are numbers"),
        (
            {**BETA, "paper": {"algo.beta=0.1": {"result": "x", "trend": "upward"}}},
            "suites.s.paper.algo.beta=0.1.trend",
        ),
        (
            {**BETA, "paper": {"algo.beta=0.3 / dpo": {"result": "a typo would leave the cell blank"}}},
            "suites.s.paper.algo.beta=0.3 / dpo: names no variant or row of this suite",
        ),
    ],
)
def test_a_bad_suite_is_an_error_naming_its_key(project: Path, spec: dict, message: str) -> None:
    write_suites(project, {"s": spec})
    with pytest.raises(ConfigError, match="suites") as err:
        suite_runs("s", load_suites(project / "suites.yaml")["s"], project / "params.yaml")
    assert message in str(err.value)


def test_the_projects_suites_load_and_cite_the_papers_rows_they_name() -> None:
    suites = load_suites(Path(__file__).resolve().parents[1] / "suites.yaml")  # raises on a key naming no row
    assert suites["sopo_t4_variants_mdm"].join == ["sopo_token_variants"]
    cited = {name for name, spec in suites.items() if spec.paper}
    assert {"sopo_t1_mdm", "sopo_t1_mld", "sopo_t3_kit", "sopo_t4_variants_mdm", "sopo_t4_k_mdm"} <= cited


def test_the_table_is_built_from_mlflow_alone(project: Path) -> None:
    runs = fill_store(project)
    # an earlier evaluation of beta 0.1's seed 0 with other numbers: the latest run of a lineage is the one read
    log_evaluation(project, runs[0].params, "evaluate@dpo", [x - 0.2 for x in BASE_R1])
    log_evaluation(project, runs[0].params, "evaluate@dpo", [x + GAINS["algo.beta=0.1"][0] for x in BASE_R1])
    # the paper's verdicts: beta 0.1's gain (+0.02 ± 0.025 over 3 seeds) holds 0: "better" fails, "within" holds
    paper = {
        "algo.beta=0.1 / dpo": {"result": "R@1 up", "trend": "better"},
        "algo.beta=0.2": {"result": "flat", "trend": "within"},
        "dpo": {"result": "never shown: a variant's key comes first"},
    }
    write_suites(project, {"s": {**BETA, "paper": paper, "figure": True}})
    md = main_report("s", project)
    table = json.loads(md.with_suffix(".json").read_text())
    for variant, gains in GAINS.items():
        got = table["variants"][variant]["seed_gains"]["dpo"]["r_precision_top1"]
        assert got["per_seed"] == pytest.approx(gains)
        assert got["mean"] == pytest.approx(sum(gains) / 3)
    # each seed's gain is the same in every replication: no verdict depends on how many the evaluation keeps
    stable = {"replications": 4, "stable_from": 2, "changed": {"2": 0, "3": 0, "4": 0}}
    assert all(table["variants"][v]["stability"] == stable for v in GAINS)
    text = md.read_text()
    assert (
        "algo.beta=0.2: Evaluation size: every verdict above (▲, ▼ or none) is the same when each evaluation keeps "
        "only its first k of its 4 replications for every k from 2 up." in text
    )
    assert "| algo.beta=0.1 | dpo | 3 |" in text and "+0.020 ± " in text
    # labels left, numbers right, the paper's words left
    assert "\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n" in text
    row = {line.split(" | ")[0]: line for line in text.splitlines() if "| dpo | 3 |" in line}
    assert row["| algo.beta=0.1"].endswith("| R@1 up | no (R@1 within) |")
    assert row["| algo.beta=0.2"].endswith("| flat | yes (R@1 within) |")
    from PIL import Image

    with Image.open(md.with_suffix(".png")) as png:  # the Fig. 5-style plot of the gain against beta
        assert png.size == (600, 384)
    assert not (project / "reports" / "metrics").exists()  # nothing but MLflow was read


def test_a_table_joins_another_suites_rows_each_against_its_own_baseline(project: Path) -> None:
    fill_store(project)  # suite s: DPO against SFT
    t1 = {"models": ["mld_sopo"], "baseline": "mld", "join": ["s"]}
    paper = {"s: algo.beta=0.2 / dpo": {"result": "flat", "trend": "within"}}
    write_suites(project, {"s": BETA, "t1": {**t1, "paper": paper}})
    (run,) = suite_runs("t1", load_suites(project / "suites.yaml")["t1"], project / "params.yaml")
    log_evaluation(project, run.params, "evaluate@mld", [x - 0.1 for x in BASE_R1])
    for k, replica in enumerate(["mld_sopo", "mld_sopo_s1", "mld_sopo_s2"]):
        log_evaluation(project, run.params, f"evaluate@{replica}", [x - 0.1 + 0.01 * k for x in BASE_R1])
    md = main_report("t1", project)
    variants = json.loads(md.with_suffix(".json").read_text())["variants"]
    assert list(variants) == ["base", "s: algo.beta=0.1", "s: algo.beta=0.2"]
    assert [v["baseline"] for v in variants.values()] == ["mld", "sft", "sft"]
    assert variants["base"]["seed_gains"]["mld_sopo"]["r_precision_top1"]["per_seed"] == pytest.approx([0, 0.01, 0.02])
    joined = variants["s: algo.beta=0.2"]["seed_gains"]["dpo"]["r_precision_top1"]["per_seed"]
    assert joined == pytest.approx(GAINS["algo.beta=0.2"])  # against SFT, not MLD
    text = md.read_text()
    assert "each Δ is the gain over the baseline its variant lists first (`mld`, `sft`)" in text
    assert "| s: algo.beta=0.1 | sft | 1 |" in text and "| base | mld | 1 |" in text
    (row,) = [line for line in text.splitlines() if line.startswith("| s: algo.beta=0.2 | dpo |")]
    assert row.endswith("| flat | yes (R@1 within) |")
    # a joined suite that is not a metrics suite of its own is refused, naming the key
    write_suites(project, {"s": BETA, "t1": {**t1, "join": ["t1"]}})
    with pytest.raises(ConfigError, match=r"suites.t1.join: 't1': a metrics suite other than itself"):
        load_suites(project / "suites.yaml")
    write_suites(project, {"t1": {**t1, "join": ["nope"]}})
    with pytest.raises(ConfigError, match=r"suites.t1.join: 'nope': no such suite"):
        load_suites(project / "suites.yaml")


PAPER_NUMBERS = {"r_precision_top1": [0.4, 0.5], "mm_dist": [3.3, 3.2], "fid": [0.5, 0.6]}


def sopo_row(project: Path, cited: dict) -> tuple[str, Path]:
    """The table row of MLD → SoPo citing ``cited``, ours gaining R@1 (+0.05 or so) with the rest level."""
    write_suites(project, {"t1": {"models": ["mld_sopo"], "baseline": "mld", "paper": {"mld_sopo": cited}}})
    (run,) = suite_runs("t1", load_suites(project / "suites.yaml")["t1"], project / "params.yaml")
    log_evaluation(project, run.params, "evaluate@mld", BASE_R1)
    for k, replica in enumerate(["mld_sopo", "mld_sopo_s1", "mld_sopo_s2"]):
        log_evaluation(project, run.params, f"evaluate@{replica}", [x + 0.05 + 0.001 * k for x in BASE_R1])
    md = main_report("t1", project)
    (row,) = [line for line in md.read_text().splitlines() if line.startswith("| base | mld_sopo | 3 |")]
    return row, md


def test_the_papers_numbers_sit_beside_ours_and_each_metrics_direction_is_checked(project: Path) -> None:
    row, md = sopo_row(project, {"result": "MLD → SoPo", "numbers": PAPER_NUMBERS})
    # the paper's R@1 and MM Dist improve and its FID worsens; ours: R@1 better, MM Dist and FID level
    assert row.endswith(
        "| R@1 0.400 → 0.500, MM Dist 3.300 → 3.200, FID 0.500 → 0.600 (MLD → SoPo) "
        "| R@1 yes (better), MM Dist no (within), FID no (within) |"
    )
    table = json.loads(md.with_suffix(".json").read_text())
    assert table["paper"]["mld_sopo"]["numbers"]["fid"] == [0.5, 0.6]


def test_a_change_inside_the_papers_own_intervals_is_within(project: Path) -> None:
    # R@1: 0.1 apart, the difference's half-width hypot(0.08, 0.07) = 0.106 covers it; MM Dist's 0.071 does not
    plus_minus = {"r_precision_top1": [0.08, 0.07], "mm_dist": [0.05, 0.05]}
    cited = PaperResult(result="MLD → SoPo", numbers=PAPER_NUMBERS, plus_minus=plus_minus)
    assert cited.directions() == {"r_precision_top1": "within", "mm_dist": "better", "fid": "worse"}
    row, _ = sopo_row(project, cited.model_dump())
    assert row.endswith(
        "| R@1 0.400 ± 0.080 → 0.500 ± 0.070, MM Dist 3.300 ± 0.050 → 3.200 ± 0.050, FID 0.500 → 0.600 (MLD → SoPo) "
        "| R@1 no (better), MM Dist no (within), FID no (within) |"
    )


@pytest.mark.parametrize(
    ("cited", "kind", "message"),
    [
        ({"numbers": {"fid": [1, 2]}, "plus_minus": {"mm_dist": [0.1, 0.1]}}, "metrics", "an interval needs"),
        ({"numbers": {"fid": [1, 2]}, "plus_minus": {"fid": [-0.1, 0.1]}}, "metrics", "plus_minus.fid"),
        ({"result": "x", "trend": "better", "numbers": {"fid": [1, 2]}}, "metrics", "numbers or a trend, not both"),
        ({"trend": "better"}, "metrics", "needs its words (result) or its numbers"),
        ({"numbers": {"fid": [1, 2]}}, "winrate", "paper.dpo.numbers: only a metrics suite compares metrics"),
        ({"numbers": {"diversity": [1, 2]}}, "metrics", "numbers.diversity"),
    ],
)
def test_a_bad_paper_citation_is_an_error_naming_its_key(project: Path, cited: dict, kind: str, message: str) -> None:
    spec = {"models": ["dpo"], **({"baseline": "sft"} if kind == "metrics" else {"kind": "winrate"})}
    write_suites(project, {"s": {**spec, "paper": {"dpo": cited}}})
    with pytest.raises(ConfigError, match="suites.s") as err:
        load_suites(project / "suites.yaml")
    assert message in str(err.value)


def test_plan_queues_only_what_mlflow_lacks_and_a_missing_evaluation_is_named(project: Path) -> None:
    runs = fill_store(project, skip="s-beta_0.2-s0:evaluate@dpo_s2")
    index = RunIndex.load("motionpref", f"sqlite:///{project / 'mlflow.db'}")
    plans = plan(load_suites(project / "suites.yaml")["s"], runs, index, project / "dvc.yaml")
    assert [p.done for p in plans] == [True, False]
    assert "evaluate@dpo_s2" in plans[1].to_run and "evaluate@dpo_s1" not in plans[1].to_run
    assert "finetune@dpo_s2" in plans[1].to_run  # no MLflow record of it in this store either
    # beta 0.1's evaluate@dpo_s2 recorded a time for the stage under this profile; nothing else it needs ran here
    assert plans[1].unknown == [s for s in plans[1].to_run if s != "evaluate@dpo_s2"]
    with pytest.raises(ConfigError, match=r"no run of s-beta_0.2-s0: evaluate@dpo_s2"):
        main_report("s", project)


def test_a_table_can_show_each_models_preference_generation_time(project: Path) -> None:
    write_suites(project, {"t1": {"models": ["mld_sopo"], "baseline": "mld", "preference_time": True}})
    (run,) = suite_runs("t1", load_suites(project / "suites.yaml")["t1"], project / "params.yaml")
    replicas = ["mld_sopo", "mld_sopo_s1", "mld_sopo_s2"]
    assert targets(load_suites(project / "suites.yaml")["t1"], run.params, project / "dvc.yaml")[-3:] == [
        f"finetune@{r}" for r in replicas
    ]
    log_evaluation(project, run.params, "evaluate@mld", BASE_R1)
    for k, replica in enumerate(replicas):
        log_evaluation(project, run.params, f"evaluate@{replica}", [x + 0.01 * k for x in BASE_R1])
        seconds = {"preference_seconds": 0.64 * (k + 1), "preference_seconds_per_caption": 0.001 * (k + 1)}
        log_stage(project, run.params, f"finetune@{replica}", {f"{replica}.json": seconds})
    md = main_report("t1", project)
    got = json.loads(md.with_suffix(".json").read_text())["variants"]["base"]["preference_time"]["mld_sopo"]
    assert got["per_seed"] == pytest.approx([0.001, 0.002, 0.003])
    assert got["seconds_per_caption"] == pytest.approx(0.002)
    text = md.read_text()
    assert "| p (Δ R@1) | s/caption |" in text and text.count("---:|") == 9  # seeds to p, then s/caption
    (row,) = [line for line in text.splitlines() if line.startswith("| base | mld_sopo | 3 |")]
    assert row.endswith(" | 0.00200 |")  # 3 significant figures, not 0.002
    # a finetuning that generates no preferences (DPO on labelled pairs) has no time to show: named, not a blank
    log_stage(project, run.params, "finetune@mld_sopo_s2", {"mld_sopo_s2.json": {"loss": 0.5}})
    with pytest.raises(ConfigError, match="finetune@mld_sopo_s2: its metrics file has no preference_seconds"):
        main_report("t1", project)


def test_progress_names_the_stage_a_queued_run_is_in(project: Path) -> None:
    import time

    import mlflow

    experiment_id = mlflow.set_experiment("motionpref").experiment_id
    name = "s-beta_0.1-s0"

    def stage(address: str, exp_name: str = name) -> None:
        with mlflow.start_run(run_name=address, tags={"motionpref.stage": address, "dvc.exp_name": exp_name}):
            pass

    stage("finetune@dpo")  # an earlier attempt of the same run: not counted
    time.sleep(0.01)
    since_ms = int(time.time() * 1000)
    assert stage_progress(experiment_id, name, since_ms) == f"{name}: between stages, 0 stages finished"
    stage("prepare_data")
    stage("finetune@dpo")
    stage("finetune@dpo", "s-beta_0.2-s0")  # another run of the queue
    client = mlflow.MlflowClient()
    client.create_run(experiment_id, tags={"motionpref.stage": "evaluate@dpo", "dvc.exp_name": name})  # running
    assert stage_progress(experiment_id, name, since_ms) == f"{name}: evaluate@dpo, 2 stages finished"


def test_estimates_are_the_median_recorded_time_of_the_stage_under_the_profile() -> None:
    index = RunIndex({}, {("evaluate@dpo", "smoke"): [3.0, 1.0, 2.0], ("evaluate@dpo", "cpu"): [100.0]})
    assert index.estimate("evaluate@dpo", "smoke") == 2.0
    assert index.estimate("evaluate@dpo", "cpu") == 100.0
    assert index.estimate("evaluate@sft", "smoke") is None


def test_a_stage_two_runs_share_is_estimated_once(project: Path) -> None:
    from motionpref.pipeline import stage_addresses

    write_suites(project, {"s": BETA})
    runs = suite_runs("s", load_suites(project / "suites.yaml")["s"], project / "params.yaml")
    index = RunIndex({}, {(a, "cpu"): [60.0] for a in stage_addresses(project / "dvc.yaml")})
    first, second = plan(load_suites(project / "suites.yaml")["s"], runs, index, project / "dvc.yaml")
    assert first.seconds == 60.0 * len(first.to_run) and not first.unknown
    # beta 0.2 shares everything but the DPO replicates' finetuning and evaluation with beta 0.1
    assert second.seconds == 60.0 * 6 and len(second.to_run) == len(first.to_run)


F3 = {"kind": "winrate", "seeds": [0, 3, 6], "models": ["dpo"]}
# per seed: temperature -> (win, loss); win - loss at 1.0: 0.10, 0.08, 0.12 (t interval excludes 0); at 2.0:
# 0.10, -0.10, 0.00 (it holds 0)
F3_RATES = [
    {1.0: (0.30, 0.20), 2.0: (0.40, 0.30)},
    {1.0: (0.28, 0.20), 2.0: (0.20, 0.30)},
    {1.0: (0.32, 0.20), 2.0: (0.3, 0.3)},
]


def test_a_winrate_suite_reads_one_study_per_seed_and_tests_win_minus_loss_across_them(project: Path) -> None:
    paper = {"dpo": {"result": "DPO preferred at every temperature", "trend": "better"}}
    write_suites(project, {"f": {**F3, "paper": paper}})
    spec = load_suites(project / "suites.yaml")["f"]
    runs = suite_runs("f", spec, project / "params.yaml")
    assert [r.params.algo.seed for r in runs] == [0, 3, 6]
    assert targets(spec, runs[0].params, project / "dvc.yaml") == ["winrate@dpo"]
    for run, rates in zip(runs, F3_RATES, strict=True):
        log_stage(project, run.params, "winrate@dpo", {"dpo.json": winrate_study("dpo", rates)})
    md = main_report("f", project)
    table = json.loads(md.with_suffix(".json").read_text())
    cold, hot = table["variants"]["base"]["dpo"]["temperatures"]
    assert cold["win_minus_loss"]["per_seed"] == pytest.approx([0.10, 0.08, 0.12])
    assert cold["win_minus_loss"]["mean"] == pytest.approx(0.10) and cold["win_minus_loss"]["verdict"] == "better"
    assert hot["win_minus_loss"]["verdict"] == "within" and hot["win"]["mean"] == pytest.approx(0.30)
    rows = [line for line in md.read_text().splitlines() if line.startswith("| base | dpo | sft |")]
    assert rows[0].startswith("| base | dpo | sft | 1 | 3 | 30.0% | 50.0% | 20.0% | +0.100 ± ")
    assert rows[0].endswith("| DPO preferred at every temperature | yes (win − loss better) |")
    assert rows[1].endswith("| no (win − loss within) |")
    assert "\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n" in md.read_text()
    from PIL import Image

    with Image.open(md.with_suffix(".png")) as png:  # Fig. 3: rates against temperature
        assert png.size == (600, 384)


def test_a_curves_suite_reads_every_replicates_history(project: Path) -> None:
    spec = {
        "kind": "curves",
        "curves": {"stage": "finetune@rlhf", "metrics": ["ppo/kl", "ppo/score_mean"]},
        "paper": {"ppo/kl": {"result": "KL grows", "trend": "rises"}},
    }
    write_suites(project, {"c": spec})
    (run,) = suite_runs("c", load_suites(project / "suites.yaml")["c"], project / "params.yaml")
    addresses = targets(load_suites(project / "suites.yaml")["c"], run.params, project / "dvc.yaml")
    assert addresses == ["finetune@rlhf", "finetune@rlhf_s1", "finetune@rlhf_s2"]
    kl = [[0.0, 0.5, 1.0], [0.0, 0.4, 0.9, 1.1], [0.1, 0.3, 1.2]]
    for address, curve in zip(addresses, kl, strict=True):
        log_stage(project, run.params, address, histories={"ppo/kl": curve, "ppo/score_mean": [0.5, 0.4, 0.6]})
    md = main_report("c", project)
    rows = json.loads(md.with_suffix(".json").read_text())["variants"]["base"]
    assert rows["ppo/kl"]["change"]["per_seed"] == pytest.approx([1.0, 1.1, 1.1])
    assert rows["ppo/kl"]["change"]["verdict"] == "rises" and rows["ppo/score_mean"]["change"]["verdict"] == "rises"
    assert [c["steps"] for c in rows["ppo/kl"]["series"]] == [[1, 2, 3], [1, 2, 3, 4], [1, 2, 3]]
    # one run: the legend tells the replicates by their stage
    assert [c["label"] for c in rows["ppo/kl"]["series"]] == ["rlhf", "rlhf_s1", "rlhf_s2"]
    text = md.read_text()
    assert (
        "| base | ppo/kl | 3 | 3/4 | 0.033 | 1.100 | +1.067 ± " in text
        and "| KL grows | yes (last − first rises) |" in text
    )
    assert "\n|---|---|---:|---:|---:|---:|---:|---:|---|---|\n" in text
    assert md.with_suffix(".png").is_file()


def test_a_curves_suites_seeds_can_set_another_param(project: Path) -> None:
    """The reward model has no replicate stages: its suite's seeds set reward.seed, each a training of its own."""
    spec = {
        "kind": "curves",
        "seed_key": "reward.seed",
        "seeds": [0, 1],
        "curves": {"stage": "train_reward", "metrics": ["reward/val_loss"]},
    }
    write_suites(project, {"r": spec})
    runs = suite_runs("r", load_suites(project / "suites.yaml")["r"], project / "params.yaml")
    assert [(r.params.reward.seed, r.params.algo.seed) for r in runs] == [(0, 0), (1, 0)]
    assert [r.params.reward.stage_key() for r in runs] == ["train_reward", "train_reward:1"]
    hashes = {lineage_hash(r.params, project / "dvc.yaml", "train_reward") for r in runs}
    assert len(hashes) == 2  # two trainings, not one found twice
    for run, curve in zip(runs, ([0.7, 0.6, 0.65], [0.7, 0.62, 0.7]), strict=True):
        log_stage(project, run.params, "train_reward", histories={"reward/val_loss": curve})
    table = json.loads(main_report("r", project).with_suffix(".json").read_text())
    assert table["variants"]["base"]["reward/val_loss"]["change"]["per_seed"] == pytest.approx([-0.05, 0.0])
    # one stage: the legend tells the replicates by the seed that made them
    assert [c["label"] for c in table["variants"]["base"]["reward/val_loss"]["series"]] == [
        "reward.seed 0",
        "reward.seed 1",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**F3, "baseline": "sft"}, "a winrate suite takes no baseline"),
        ({**F3, "preference_time": True}, "a winrate suite takes no preference_time"),
        ({"kind": "curves", "models": ["dpo"]}, "a curves suite needs curves"),
        (
            {**F3, "paper": {"dpo": {"result": "x", "trend": "rises"}}},
            "paper.dpo.trend: a winrate suite's trend is better",
        ),
        ({**F3, "models": ["gt"]}, "no stage winrate@gt"),
        ({"kind": "curves", "curves": {"stage": "finetune@nope", "metrics": ["a"]}}, "no stage finetune@nope"),
    ],
)
def test_a_suite_of_another_kind_names_what_it_lacks(project: Path, spec: dict, message: str) -> None:
    write_suites(project, {"s": spec})
    with pytest.raises(ConfigError, match="suites") as err:
        suite_runs("s", load_suites(project / "suites.yaml")["s"], project / "params.yaml")
    assert message in str(err.value)


def test_a_winrate_suite_with_one_seed_is_refused_at_report(project: Path) -> None:
    write_suites(project, {"f": {**F3, "seeds": [0]}})
    (run,) = suite_runs("f", load_suites(project / "suites.yaml")["f"], project / "params.yaml")
    log_stage(project, run.params, "winrate@dpo", {"dpo.json": winrate_study("dpo", F3_RATES[0])})
    with pytest.raises(ConfigError, match="dpo: a win rate across seeds needs 2 or more replicates"):
        main_report("f", project)


@pytest.mark.slow
def test_a_queued_run_runs_the_stages_mlflow_lacks_though_the_committed_lock_matches(tmp_path: Path) -> None:
    """On a machine that rebuilds the committed lock's outputs bit for bit, DVC skips a stage whose lock entry
    matches, so it must not see that entry when MLflow lacks the stage's run (DVC's own queue, a real stash)."""
    from motionpref.suites import Lock, queue_status

    ran = tmp_path / "ran.log"
    root = tmp_path / "project"
    root.mkdir()
    env = isolated_env(tmp_path)

    dvc = BIN / "dvc"

    def sh(*args: str | Path) -> str:
        return run_command(list(args), root, env).stdout

    write = "import sys; open(sys.argv[1], 'a').write('ran\\n'); open('out.txt', 'w').write('x')"
    stage = {"cmd": f'{sys.executable} -c "{write}" {ran}', "params": ["p"], "outs": ["out.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"a": stage}}))
    (root / "params.yaml").write_text("p: 1\n")
    sh("git", "init", "-q")
    sh(dvc, "init", "-q")
    sh(dvc, "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "the lock, as committed elsewhere")
    # this machine never ran the stage: its run cache is empty, its outputs match the lock
    shutil.rmtree(root / ".dvc" / "cache" / "runs")
    assert ran.read_text() == "ran\n"
    lock = (root / "dvc.lock").read_bytes()

    sh(dvc, "exp", "run", "--queue", "-n", "as_committed", "a")
    with Lock.read(root / "dvc.lock").without(["a", "not_a_stage"]):
        assert yaml.safe_load((root / "dvc.lock").read_text())["stages"] == {}
        sh(dvc, "exp", "run", "--queue", "-n", "forgetting_a", "a")
    assert (root / "dvc.lock").read_bytes() == lock  # the workspace's lock is put back as it was
    assert sh("git", "status", "--porcelain") == ""
    sh(dvc, "exp", "run", "--run-all", "--jobs", "1")
    status = queue_status(root, ["as_committed", "forgetting_a"])
    assert status == {"as_committed": "Success", "forgetting_a": "Success"}
    assert ran.read_text() == "ran\n" * 2  # DVC skipped the stage as committed; without its entry it ran


@pytest.mark.slow
def test_stages_dvc_restored_from_its_run_cache_run_again_alone_in_a_scratch_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DVC restores a stage it has seen from its run cache without running it, so an MLflow store never sees a
    second experiment of the same params run; rerun_restored runs just those stages, on the experiment's own
    upstream outputs, logging under its name, and leaves the workspace as it was."""
    from motionpref.suites import queue_status, rerun_restored

    ran = tmp_path / "ran.log"
    root = tmp_path / "project"
    root.mkdir()
    env = isolated_env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dvc = BIN / "dvc"

    def sh(*args: str | Path) -> str:
        return run_command(list(args), root, env).stdout

    # each stage logs its name, what it read and the experiment and store it would log to
    log = (
        "import os, sys; name, src, dst = sys.argv[2:]; got = open(src).read().strip() if src != '-' else "
        "open('params.yaml').read().split()[-1]; open(sys.argv[1], 'a').write(' '.join([name, got, "
        "os.environ.get('DVC_EXP_NAME', ''), os.environ.get('MLFLOW_TRACKING_URI', '')]) + '\\n'); "
        "open(dst, 'w').write(got)"
    )
    stages = {
        "a": {"cmd": f'{sys.executable} -c "{log}" {ran} a - a.txt', "params": ["p"], "outs": ["a.txt"]},
        "b": {"cmd": f'{sys.executable} -c "{log}" {ran} b a.txt b.txt', "deps": ["a.txt"], "outs": ["b.txt"]},
        # never run: the lock has no entry for it, as a smoke workspace's has none for what its suites skip
        "c": {"cmd": f'{sys.executable} -c "{log}" {ran} c - c.txt', "params": ["p"], "outs": ["c.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "params.yaml").write_text("p: 1\n")
    sh("git", "init", "-q")
    sh(dvc, "init", "-q")
    sh(dvc, "repro", "-q", "b")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "p 1")
    assert ran.read_text().splitlines() == ["a 1  ", "b 1  "]

    for name in ("first", "second"):  # the same params twice: DVC's run cache serves the second
        sh(dvc, "exp", "run", "--queue", "-n", name, "-S", "p=2", "b")
    sh(dvc, "exp", "run", "--run-all", "--jobs", "1")
    assert queue_status(root, ["first", "second"]) == {"first": "Success", "second": "Success"}
    assert ran.read_text().splitlines()[2:] == ["a 2 first ", "b 2 first "]  # the second ran nothing

    store = "sqlite:///elsewhere.db"
    rerun_restored(root, {"second": ["b", "a"]}, root / "dvc.yaml", store)
    # upstream first, each reading the experiment's own input (p 2, not the workspace's 1), under its name
    assert ran.read_text().splitlines()[4:] == [f"a 2 second {store}", f"b 2 second {store}"]
    assert (root / "params.yaml").read_text() == "p: 1\n" and sh("git", "status", "--porcelain") == ""

    rerun_restored(root, {"second": ["b"]}, root / "dvc.yaml", store)  # b alone reads the experiment's a.txt
    assert ran.read_text().splitlines()[6:] == [f"b 2 second {store}"]
