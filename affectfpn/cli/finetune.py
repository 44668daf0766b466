"""``affectfpn finetune``: fine-tune a pretrained model on your own labelled faces."""

import argparse
import json
import tomllib
from typing import Any

from affectfpn.cli._common import EXIT_OK, Command, _UsageError


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "finetune",
        "fine-tune a model on your own labelled faces",
        "Fine-tune a pretrained model (default: the embedded default) on your faces, with "
        "measured defaults: the start is scored on VAL as epoch 0 and kept when no epoch beats "
        "it; heads your labels lack (the default's action units) are kept and held to the "
        "start, and so is what it knew about other faces (images inverted from the start, made "
        "once and cached: minutes on a CPU; --set replay_synthetic=0 turns it off); --add-task "
        "va adds a valence/arousal head, trained from a CSV with valence and "
        "arousal columns. TRAIN and VAL are folders of expression class folders "
        "(train/happy/0001.jpg) or label CSVs (path, expression, valence, arousal, AU1..AU26); "
        "action units the CSV labels that the start lacks become new outputs of its AU head. "
        "The model is written to OUT/best.",
        [
            "affectfpn finetune my-faces/train my-faces/val --out runs/mine",
            "affectfpn finetune train.csv val.csv --add-task va --out runs/va",
            "affectfpn finetune my-faces/train my-faces/val --set epochs=20 --check",
        ],
    )
    p.add_argument("train", help="training faces: a folder of class folders or a label .csv")
    p.add_argument("val", nargs="?", help="validation faces (same forms); strongly recommended")
    p.add_argument("--out", default="runs/finetune", metavar="DIR", help="default: runs/finetune")
    p.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="NAME|DIR|REPO",
        help="the start: a registered name, a model folder or a Hub repo id (default: the "
        "embedded default model)",
    )
    p.add_argument(
        "--add-task",
        dest="add_tasks",
        action="append",
        default=[],
        choices=["va", "expression", "au"],
        help="add a task (a new head) to the start's; repeatable",
    )
    p.add_argument(
        "--no-new-units",
        action="store_true",
        help="do not add the action units your training labels name that the start lacks "
        "(by default they become new outputs of its AU head)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a training setting, e.g. --set epochs=20 (TOML values; repeatable)",
    )
    p.add_argument(
        "--check", action="store_true", help="only check the data and settings; do not train"
    )
    p.set_defaults(handler=run)


def _settings(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("train.")
        if not sep or not key:
            raise _UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. epochs=20", "finetune")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value  # a bare word is a string
    return out


def run(args: argparse.Namespace) -> int:
    from affectfpn.recipes.finetune import finetune_recipe, new_action_units
    from affectfpn.recipes.stage import inspect_data, train_from_recipe

    recipe = finetune_recipe(
        args.train,
        args.val,
        init=args.model,
        output_dir=args.out,
        add_tasks=args.add_tasks,
        add_action_units=() if args.no_new_units else "labelled",
        settings=_settings(args.overrides),
    )
    found = inspect_data(recipe.table("data"), source="affectfpn finetune")
    if args.check:
        start, units = new_action_units(recipe, labelled=found.units.get("train", []))
        print(f"ready to fine-tune {start} into {recipe.output_dir}")
        for line in found.lines:
            print(f"  {line}")
        if units:
            print(
                f"  new action units: {', '.join(units)} (the start lacks them: its AU head "
                "gains them; --no-new-units leaves them out)"
            )
        return EXIT_OK
    summary = train_from_recipe(recipe)
    best = summary.get("best_epoch")
    kept = " (the start: no epoch beat it on the validation data)" if best == 0 else ""
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    print(f"best epoch {best}{kept}: {recipe.output_dir / 'best'}")
    calibration = summary.get("calibration")
    if calibration:
        from affectfpn.calibration import ece_changes

        eces = ece_changes(calibration["sets"])
        print(
            f"calibrated: expression temperature {calibration['temperature']:.4f}, fitted on the "
            f"validation data (expected calibration error {eces})"
        )
    return EXIT_OK
