"""``affectfpn soup``: average models, re-estimate BatchNorm statistics, shift logits."""

import argparse
from pathlib import Path

from affectfpn.cli._common import EXIT_OK, Command, _positive_int


def _offset(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=OFFSET such as Fear=0.3, got {text!r}"
        ) from None


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "soup",
        "average models (a model soup), re-estimate BatchNorm statistics, shift logits",
        "Average the weights of models of one architecture (registered names, folders, Hub "
        "repo ids or a Trainer's last.pt), optionally re-estimate the BatchNorm statistics on "
        "un-augmented faces and add offsets to expression logits, and save the result.",
        [
            "affectfpn soup runs/a/best runs/b/last.pt --out runs/soup "
            "--bn-data data/fer2013/train",
            "affectfpn soup runs/soup --out runs/shifted --offset Fear=0.2",
        ],
    )
    p.add_argument("models", nargs="+", help="names, folders, repo ids or Trainer last.pt")
    p.add_argument("--out", required=True, type=Path, help="folder to save the model in")
    p.add_argument("--bn-data", help="un-augmented faces for the BatchNorm statistics")
    p.add_argument(
        "--bn-samples", type=_positive_int, default=8192, help="faces drawn (default 8192)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the faces drawn")
    p.add_argument(
        "--offset",
        type=_offset,
        action="append",
        default=[],
        metavar="NAME=OFFSET",
        help="add OFFSET to the logit of expression NAME (repeatable)",
    )
    p.add_argument("--threads", type=_positive_int, help="torch threads")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from affectfpn.recipes.soup import (
        average_models,
        load_model_or_checkpoint,
        offset_expression_logits,
        recalibrate_batchnorm,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [load_model_or_checkpoint(source) for source in args.models]
    model = average_models(models) if len(models) > 1 else models[0]
    if args.bn_data:
        from affectfpn.evaluation import build_eval_dataset

        seen = recalibrate_batchnorm(
            model,
            build_eval_dataset(args.bn_data, model.config),
            samples=args.bn_samples,
            seed=args.seed,
        )
        print(f"BatchNorm statistics from {seen} faces of {args.bn_data}")
    if args.offset:
        offset_expression_logits(model, dict(args.offset))
    model.save_pretrained(args.out)
    print(f"saved {args.out}")
    return EXIT_OK
