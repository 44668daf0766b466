"""``affectfpn publish``: evaluate, card and register a trained model folder."""

import argparse
import json
from pathlib import Path
from typing import Any

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
    _note,
    _UsageError,
)
from affectfpn.errors import ConfigError, InputError


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "publish",
        "evaluate, card and register a trained model folder",
        "Turn a trained model folder (a run's best/) into a published model: evaluate it on "
        "each --eval dataset, store float16 weights when that moves the first figure by less "
        "than 0.001, measure the inference speed on this machine, and write config.json, "
        "model.safetensors, the model card README.md, model_info.json (the registry entry, with "
        "the weights' SHA-256) and evaluation.json into the folder NAME of --out DIR (default: "
        "the current directory). Prints the measured figures as JSON. To embed the model into "
        "the package, run it from a source checkout with --out affectfpn/weights; for the Hub, "
        "push the folder with push_to_hub.",
        [
            "affectfpn publish runs/fer2013/best --name my-fer2013 --eval test=data/fer2013/test",
            "affectfpn publish runs/fer2013/best --name my-fer2013 --out affectfpn/weights "
            "--card card.json --eval test=data/fer2013/test",
            "affectfpn publish runs/fer2013/best --name my-fer2013 --full-precision "
            "--eval test=data/fer2013/test::data/fer2013/overlap_with_train.txt",
        ],
    )
    p.add_argument(
        "source", help="the trained model folder, with config.json and model.safetensors"
    )
    p.add_argument("--name", required=True, help="registry name of the published model")
    p.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help="parent folder: the model is written to DIR/NAME (default: the current directory); "
        "to embed the model into the package, use --out affectfpn/weights from a source checkout",
    )
    p.add_argument(
        "--eval",
        dest="evals",
        action="append",
        default=[],
        metavar="LABEL=PATH[::EXCLUDE]",
        help="an evaluation dataset (repeatable; at least one); EXCLUDE is a file of image "
        "paths to leave out. The first one decides whether float16 weights are kept",
    )
    p.add_argument(
        "--au-teacher",
        dest="au_teachers",
        action="append",
        default=[],
        metavar="LABEL=FOLDER::TABLE[::EXCLUDE]",
        help="score the AU outputs against a teacher's pseudo-label table on an image folder "
        "(repeatable)",
    )
    p.add_argument("--card", metavar="FILE", help="JSON file of model-card metadata")
    p.add_argument("--full-precision", action="store_true", help="keep float32 weights")
    p.add_argument(
        "--default", action="store_true", help="mark it as the default model of the registry"
    )
    p.set_defaults(handler=run)


def _evals(items: list[str]) -> list[tuple[str, str, str | None]]:
    evals = []
    for item in items:
        label, sep, rest = item.partition("=")
        if not sep:
            raise _UsageError(f"--eval {item!r} must look like LABEL=PATH[::EXCLUDE]", "publish")
        path, _, exclude = rest.partition("::")
        evals.append((label, path, exclude or None))
    return evals


def _teachers(items: list[str]) -> list[tuple[str, str, str, str | None]]:
    teachers = []
    for item in items:
        label, sep, rest = item.partition("=")
        parts = rest.split("::")
        if not sep or len(parts) not in (2, 3):
            raise _UsageError(
                f"--au-teacher {item!r} must look like LABEL=FOLDER::TABLE[::EXCLUDE]", "publish"
            )
        teachers.append((label, parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    return teachers


def _card(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    card_path = Path(path).expanduser()
    if not card_path.is_file():
        raise InputError(f"--card {path}: no such file")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"--card {path}: not valid JSON ({err})") from None
    if not isinstance(card, dict):
        raise ConfigError(f"--card {path}: must hold a JSON object, not {type(card).__name__}")
    return card


def run(args: argparse.Namespace) -> int:
    if not args.evals:
        raise _UsageError(
            "give at least one --eval LABEL=PATH[::EXCLUDE]: a model is published with figures",
            "publish",
        )
    evals = _evals(args.evals)
    teachers = _teachers(args.au_teachers)
    card = _card(args.card)
    from affectfpn.recipes.publish import publish

    out = Path(args.out).expanduser()
    info = publish(
        args.source,  # a folder, or a registered name or Hub repo id (as for --model)
        name=args.name,
        out=out,
        evals=evals,
        half=not args.full_precision,
        default=args.default,
        card=card,
        au_teachers=teachers,
    )
    print(json.dumps(info["metrics"], indent=2))
    _note(args, f"published {args.name} to {out / args.name}")
    return EXIT_OK
