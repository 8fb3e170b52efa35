"""``motionpref``: every DVC stage as a command, plus the tools around the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from motionpref.config import ConfigError, load_params
from motionpref.pipeline import ITEM_STAGES, STAGES, run_stage

app = typer.Typer(
    help="Preference learning for text-to-motion generation: the pipeline's stages and tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", help="parameters file")]


def _fail(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _stage_command(name: str) -> None:
    if name in ITEM_STAGES:

        def command(
            item: Annotated[str, typer.Argument(help="which model")], params: ParamsOption = Path("params.yaml")
        ) -> None:  # noqa: E501
            try:
                run_stage(name, params, item=item)
            except ConfigError as e:
                _fail(str(e))

    else:

        def command(params: ParamsOption = Path("params.yaml")) -> None:  # type: ignore[misc]
            try:
                run_stage(name, params)
            except ConfigError as e:
                _fail(str(e))

    app.command(name.replace("_", "-"), help=STAGES[name])(command)


for _name in STAGES:
    _stage_command(_name)


@app.command("check-params")
def check_params(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml (with its profile applied) and print the resolved values."""
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


if __name__ == "__main__":
    app()
