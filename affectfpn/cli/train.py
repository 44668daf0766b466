"""``affectfpn train``: run a training recipe (TOML)."""

import argparse
import json
from pathlib import Path
from typing import Any

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
)


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "train",
        "run a training recipe",
        "Train a model from a recipe file (TOML): a plain training run, or the paper's "
        "teacher-student pipeline in stages. An interrupted run resumes where it stopped. "
        "Prints the run's summary as JSON.",
        [
            "affectfpn train recipes/fer2013.toml",
            "affectfpn train recipes/fer2013.toml --set train.epochs=3 --set train.lr=0.01",
            "affectfpn train recipes/abaw2-teacher-student.toml --stage teachers",
            "affectfpn train recipes/fer2013.toml --check",
        ],
    )
    p.add_argument("recipe", help="the recipe file (TOML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument(
        "--stage",
        dest="stages",
        action="append",
        default=None,
        metavar="STAGE",
        help="teacher-student recipes: run only this stage (teachers, pseudo, student, "
        "evaluate); repeatable",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help=(
            "only check the recipe (with --set applied) and that its data paths exist and hold "
            "labelled images; do not train"
        ),
    )
    p.set_defaults(handler=run)


def _short(summary: Any) -> Any:
    if isinstance(summary, dict):
        return {k: _short(v) for k, v in summary.items() if k != "history"}
    return summary


def run(args: argparse.Namespace) -> int:
    from affectfpn.recipes.recipe import load_recipe, run_recipe

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("train.progress=false")
    recipe = load_recipe(Path(args.recipe).expanduser(), overrides)
    if args.check:
        lines: list[str] = []
        if recipe.kind == "train":
            from affectfpn.recipes.stage import check_data

            lines = check_data(recipe.table("data"), source=recipe.source)
        print(
            f"{recipe.source}: a valid {recipe.kind} recipe {recipe.name!r}, output "
            f"{recipe.output_dir}"
        )
        for line in lines:
            print(f"  {line}")
        return EXIT_OK
    summary = run_recipe(recipe, stages=args.stages)
    print(json.dumps(_short(summary), indent=2, default=str))
    return EXIT_OK
