"""``motionpref``: every DVC stage as a command, plus the tools around the pipeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from motionpref.config import ConfigError, load_params
from motionpref.pipeline import ITEM_STAGES, STAGES, run_stage

app = typer.Typer(
    help="Preference learning for text-to-motion generation: the pipeline's stages and tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", help="parameters file")]


def _fail(message: str) -> NoReturn:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _run(name: str, params: Path, item: str | None = None) -> None:
    """Run a stage; input problems a user can fix end in their message and exit code 2, not a traceback."""
    from motionpref.models.checkpoint import CheckpointError
    from motionpref.motion.dataset import DatasetError
    from motionpref.prefs.labels import LabelError
    from motionpref.synth.programs import ProgramError

    try:
        run_stage(name, params, item=item)
    except (CheckpointError, ConfigError, DatasetError, LabelError, ProgramError, FileNotFoundError) as e:
        _fail(f"{name}{'@' + item if item else ''}: {e}")


def _stage_command(name: str) -> None:
    if name in ITEM_STAGES:

        def command(
            item: Annotated[str, typer.Argument(help="which model")], params: ParamsOption = Path("params.yaml")
        ) -> None:
            _run(name, params, item)

    else:

        def command(params: ParamsOption = Path("params.yaml")) -> None:  # type: ignore[misc]
            _run(name, params)

    app.command(name.replace("_", "-"), help=STAGES[name])(command)


for _name in STAGES:
    _stage_command(_name)


@app.command("check-params")
def check_params(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml and every profile in it, and print the values the selected profile resolves to."""
    import yaml

    try:
        resolved = load_params(params)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(yaml.safe_dump(resolved.model_dump(mode="json", exclude={"profiles"}), sort_keys=False))


@app.command()
def render(
    motion: Annotated[Path, typer.Argument(help="features (T, 263|251) or joints (T, J, 3) as .npy")],
    out: Annotated[Path, typer.Option("--out", help="output .gif or .mp4")],
    other: Annotated[Path | None, typer.Option("--other", help="a second motion, side by side")] = None,
    title: Annotated[str, typer.Option(help="caption drawn as the title")] = "",
    skeleton: Annotated[str, typer.Option(help="humanml3d | kit")] = "humanml3d",
) -> None:
    """Draw a stick figure animation of a motion (or two, side by side)."""
    import numpy as np

    from motionpref.motion.render import render_motion, render_side_by_side
    from motionpref.motion.skeleton import SKELETONS

    if skeleton not in SKELETONS:
        _fail(f"--skeleton: expected one of {', '.join(SKELETONS)}, got {skeleton!r}")
    arrays = []
    for path in [motion] + ([other] if other else []):
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            _fail(f"{path}: cannot read a .npy array ({e})")
    try:
        if other is None:
            render_motion(arrays[0], out, title=title, skeleton=SKELETONS[skeleton])
        else:
            render_side_by_side(arrays[0], arrays[1], out, caption=title, skeleton=SKELETONS[skeleton])
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"wrote {out}")


@app.command()
def generate(
    caption: Annotated[str, typer.Argument(help="what the person should do, e.g. 'a person kicks with the left leg'")],
    out: Annotated[Path, typer.Option("--out", help="output .gif or .mp4")],
    model: Annotated[
        str, typer.Option("--model", help="trained models, comma-separated: sft, dpo, mdm_sopo, ... (data/models)")
    ] = "sft",
    seeds: Annotated[int, typer.Option("--seeds", help="samples per model, drawn with seeds 0..N-1")] = 1,
    length: Annotated[
        int | None,
        typer.Option(
            "--length",
            help="frames of a diffusion policy's motions (default: drawn from the val clips' lengths with each "
            "seed, as the win-rate study does); token policies end their motions themselves",
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Sample a caption from trained models into one animation: a row per model, a column per seed, each panel
    titled with its model and seed and, on synthetic data, the synthetic judge's score under it."""
    from motionpref.generate import generate_grid
    from motionpref.tracking import project_root

    try:
        resolved = load_params(params)
        models = [m.strip() for m in model.split(",") if m.strip()]
        written = generate_grid(
            project_root(), resolved, caption, models, seeds, length, out, lambda line: typer.echo(line, err=True)
        )
    except (ValueError, OSError) as e:  # ConfigError, CheckpointError and DatasetError are ValueErrors
        _fail(f"generate: {e}")
    typer.echo(f"wrote {written}")


@app.command()
def qualitative(
    out: Annotated[Path, typer.Option("--out", help="output .gif or .mp4 (e.g. reports/tables/qualitative_NAME.gif)")],
    model: Annotated[
        str, typer.Option("--model", help="trained models, comma-separated, the base first: sft,dpo,rlhf")
    ] = "sft",
    captions: Annotated[int, typer.Option("--captions", help="held-out prompts, a block each")] = 4,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """A qualitative figure (SoPo's Fig. 1): the same held-out prompts (test programs of prompts.parquet) sampled
    once by every model with the prompt's own seed, side by side, the synthetic judge's score under each."""
    from motionpref.generate import qualitative_grid
    from motionpref.tracking import project_root

    try:
        resolved = load_params(params)
        models = [m.strip() for m in model.split(",") if m.strip()]
        written = qualitative_grid(
            project_root(), resolved, models, captions, out, lambda line: typer.echo(line, err=True)
        )
    except (ValueError, OSError) as e:  # ConfigError, CheckpointError and DatasetError are ValueErrors
        _fail(f"qualitative: {e}")
    typer.echo(f"wrote {written}")


@app.command("label-app")
def label_app(
    params: ParamsOption = Path("params.yaml"),
    host: Annotated[str | None, typer.Option(help="address to bind (default app.host: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default app.port)")] = None,
    users: Annotated[
        str | None, typer.Option(help="logins 'alice:pw1,bob:pw2' (default: MOTIONPREF_APP_USERS; none = no login)")
    ] = None,
    policy: Annotated[
        str, typer.Option(help="whose pairs: sft (the token policy's) or mdm (sample_pairs@mdm, for Diffusion-DPO)")
    ] = "sft",
) -> None:
    """Serve the labeling app: two motions side by side, pick the better one and by how much (or skip)."""
    try:
        resolved = load_params(params)
    except ConfigError as e:
        _fail(str(e))
    cfg = resolved.app
    from motionpref.pipeline import artifacts
    from motionpref.pipeline.ingest_labels import sources
    from motionpref.prefs.app import label_app_main

    # the pairs and label folder that ingest_labels@<policy> reads, so what a human labels is what gets ingested
    try:
        pairs, labels_dir = sources(resolved.ingest, policy)
    except ValueError as e:
        _fail(str(e))
    label_app_main(
        Path(pairs),
        Path(labels_dir),
        host or cfg.host,
        port or cfg.port,
        users,
        previews_dir=Path(artifacts.APP_PREVIEWS),
        shuffle_seed=cfg.shuffle_seed,
        preview_size=cfg.preview_size,
    )


@app.command("import-instructmotion")
def import_instructmotion(
    labels: Annotated[Path, typer.Argument(help="the release's preference_labels.jsonl")],
    root: Annotated[Path | None, typer.Option(help="the release's preference_data/ folder (for tokens)")] = None,
    out: Annotated[Path, typer.Option(help="folder for labels/instructmotion.jsonl and pairs.parquet")] = Path(
        "data/prefs/import"
    ),
) -> None:
    """Import the InstructMotion release (labels and pairs); ingest it with ingest.pairs = <out>/pairs.parquet and
    ingest.labels_dir = <out>/labels."""
    from motionpref.prefs.instructmotion import read_instructmotion, write_import
    from motionpref.prefs.labels import LabelError

    try:
        imported = read_instructmotion(labels, root)
        write_import(imported, out / "labels" / "instructmotion.jsonl", out / "pairs.parquet")
    except (LabelError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(f"imported {len(imported.judgments)} judgments of {len(imported.pairs)} pairs into {out}")


suite_app = typer.Typer(
    help="Experiment suites (suites.yaml): grids of -S overrides x seeds through DVC's queue, tables from MLflow.",
    no_args_is_help=True,
)
app.add_typer(suite_app, name="suite")
RootOption = Annotated[Path, typer.Option("--root", help="the project folder (dvc.yaml, params.yaml, suites.yaml)")]


@suite_app.command("list")
def suite_list(root: RootOption = Path(".")) -> None:
    """The suites of suites.yaml, with their runs."""
    from motionpref.suites import SUITES_FILE, load_suites

    try:
        suites = load_suites(root / SUITES_FILE)
    except ConfigError as e:
        _fail(str(e))
    for name, spec in suites.items():
        variants = math.prod(len(values) for values in spec.grid.values())
        typer.echo(f"{name}: {variants} variant(s) x {len(spec.seeds)} seed(s). {spec.description}".rstrip())


@suite_app.command("run")
def suite_run(
    name: Annotated[str, typer.Argument(help="a suite of suites.yaml")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="DVC queue workers (experiments at once)")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan and stop")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="ignore the runs MLflow already holds")] = False,
    root: RootOption = Path("."),
) -> None:
    """Print the suite's plan (runs, estimated minutes from MLflow's recorded stage times), queue the runs MLflow
    does not hold yet as DVC experiments and follow DVC's queue until they end."""
    from motionpref.suites import main_run

    try:
        code = main_run(name, root.resolve(), jobs, dry_run, fresh)
    except (ConfigError, RuntimeError) as e:
        _fail(str(e))
    raise typer.Exit(code)


@suite_app.command("report")
def suite_report(
    name: Annotated[str, typer.Argument(help="a suite of suites.yaml")], root: RootOption = Path(".")
) -> None:
    """Write reports/tables/NAME.{md,json} from the suite's MLflow runs alone."""
    from motionpref.suites import main_report

    try:
        path = main_report(name, root.resolve())
    except ConfigError as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")


if __name__ == "__main__":
    app()
