"""Where the stages read and write, relative to the project root: the one home of every artifact path
(``dvc.yaml`` names the same paths as deps and outs; tests/test_wiring.py checks they agree)."""

from __future__ import annotations

DATASET = "data/dataset"
TOKENS = "data/tokens"
MODELS = "data/models"
PREFS = "data/prefs"
REPORTS = "reports"

VQVAE = f"{MODELS}/vqvae"
EVALUATOR = f"{MODELS}/evaluator"
RETRIEVAL = f"{MODELS}/retrieval"
REWARD = f"{MODELS}/reward"
POLICY_SFT = f"{MODELS}/policy_sft"

PROMPTS = f"{PREFS}/prompts.parquet"
PAIRS = f"{PREFS}/pairs.parquet"
MOTIONS = f"{PREFS}/motions"
PREVIEWS = f"{PREFS}/previews"
APP_PREVIEWS = f"{PREFS}/app_previews"
LABELS_DIR = f"{PREFS}/labels"  # human labelers' files; the label stage's in simulated/
SIMULATED_LABELS = f"{LABELS_DIR}/simulated"
PREFERENCES = f"{PREFS}/preferences.parquet"
QUARANTINE = f"{PREFS}/quarantine.jsonl"


def policy(name: str) -> str:
    """A policy's folder: ``sft`` is the supervised one, any other name a finetuned one (``finetune@<name>``)."""
    return f"{MODELS}/policy_{name}"


DIFFUSION_FAMILIES = ("mdm", "mld")


def prefs_path(policy: str, path: str) -> str:
    """Where the preference data of pairs sampled from ``policy`` lives (``path``: PAIRS, MOTIONS, ...): the SFT
    policy's as named above, a diffusion base's under ``data/prefs/<policy>/`` (``data/prefs/mdm/pairs.parquet``)."""
    if policy == "sft":
        return path
    if policy not in DIFFUSION_FAMILIES:
        raise ValueError(f"no preference data for policy {policy!r}; expected sft or one of {DIFFUSION_FAMILIES}")
    return f"{PREFS}/{policy}/{path.removeprefix(PREFS + '/')}"


def prefs_report(stage: str, policy: str) -> str:
    """The statistics JSON of a preference stage (``pairs_stats``, ``prefs_stats``) for ``policy``'s pairs."""
    return stage_report(stage if policy == "sft" else f"{stage}_{policy}")


def base_model(model: str) -> str:
    """The model a finetuned one started from: ``mdm`` for ``mdm_sopo``, ``mld`` for ``mld_modipo``, else ``sft``."""
    family = model.split("_")[0]
    return family if family in DIFFUSION_FAMILIES else "sft"


def replicate(model: str, k: int) -> str:
    """Seed replicate ``k`` of a finetuned model (``finetune@dpo_s1``: ``algo.seed + 1``); replicate 0 is the model."""
    return model if k == 0 else f"{model}_s{k}"


def stage_report(stage: str) -> str:
    """The metrics JSON a training stage writes (``reports/train_vqvae.json``)."""
    return f"{REPORTS}/{stage}.json"


def model_metrics(model: str) -> str:
    return f"{REPORTS}/metrics/{model}.json"


def finetune_report(algorithm: str) -> str:
    return f"{REPORTS}/finetune/{algorithm}.json"


def winrate_report(model: str, ext: str) -> str:
    return f"{REPORTS}/winrate/{model}.{ext}"
