"""``affectfpn distill``: the soft expression labels of one or more teacher models."""

import argparse
from pathlib import Path

from affectfpn.cli._common import EXIT_OK, Command, _positive_int


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "distill",
        "write a teacher ensemble's soft expression labels (for distillation)",
        "Run one or more teacher models over a student's training images and write their "
        "averaged expression probabilities as a label table (key, p_Neutral..p_Surprise), "
        "which a recipe's dataset reads with pseudo_labels = 'table.csv' and distill_weight.",
        [
            "affectfpn distill --teacher fer2013-multitask-resnet18-fpn "
            "--data data/fer2013/train --out runs/distill/train.csv",
            "affectfpn distill --teacher runs/a/best --teacher runs/b/best --data faces/train "
            "--out soft.csv --temperature 2",
        ],
    )
    p.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="NAME|DIR|REPO",
        help="a teacher: registered name, model folder or Hub repo id (repeat for an ensemble)",
    )
    p.add_argument("--data", required=True, help="the student's training images (class folders)")
    p.add_argument("--out", required=True, help="table to write (.csv or .json)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (1)")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="N")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: auto)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from affectfpn.recipes.distill import soft_expression_table

    table = soft_expression_table(
        args.teacher,
        args.data,
        temperature=args.temperature,
        batch_size=args.batch_size,
        device=args.device,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.save(args.out)
    print(f"wrote {len(table)} soft labels of {len(args.teacher)} teacher(s) to {args.out}")
    return EXIT_OK
