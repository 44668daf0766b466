"""``affectfpn evaluate``: ABAW2 scores on an image folder, Aff-Wild2 root or label CSV."""

import argparse
import sys
from pathlib import Path
from typing import Any

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
    _load_model,
    _note,
    _positive_int,
    _probability,
    _UsageError,
)
from affectfpn.errors import InputError


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "evaluate",
        "score a model on a labelled dataset (ABAW2 metrics)",
        "Score a model on labelled data: a folder of expression class folders (FER2013 test), "
        "an Aff-Wild2 root (its validation split) or a label CSV. Prints accuracy, macro F1 and "
        "S_EXPR and the expected calibration error (ECE) for expressions, CCC and S_VA for "
        "valence/arousal, F1 and S_AU for action units, for every task that both the model and "
        "the labels have.",
        [
            "affectfpn evaluate data/fer2013/test --exclude data/fer2013/overlap_with_train.txt",
            "affectfpn evaluate /data/Aff-Wild2 --model user/affect-model --output report.json",
            "affectfpn evaluate labels.csv --batch-size 128 --device cuda",
            "affectfpn evaluate data/lfw-expressions/test --reliability reliability.png",
        ],
        "model",
    )
    p.add_argument("dataset", help="an image-class folder, an Aff-Wild2 root, or a label .csv")
    p.add_argument(
        "--exclude",
        metavar="FILE",
        help="text file of relative image paths to leave out (e.g. overlap_with_train.txt)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the full report as JSON here")
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="default: 64")
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        metavar="N",
        help="data-loading worker processes (default: 0)",
    )
    p.add_argument(
        "--au-threshold",
        type=_probability,
        default=0.5,
        metavar="P",
        help="an AU counts as present from this probability (default: 0.5)",
    )
    p.add_argument(
        "--reliability",
        metavar="PNG",
        help="write a reliability diagram of the expression probabilities (needs matplotlib)",
    )
    p.set_defaults(handler=run)


def _evaluation_summary(report: Any) -> str:
    name = report.model_name or "model"
    if report.model_revision:
        name += f"@{report.model_revision}"
    excluded = f" ({report.excluded} excluded)" if report.excluded else ""
    lines = [
        f"model:    {name} ({', '.join(report.model_tasks)})",
        f"data:     {report.dataset}",
        f"samples:  {report.num_samples}{excluded}",
    ]
    for task, m in report.metrics.items():
        n = report.labelled.get(task, 0)
        if task == "expression":
            lines.append(
                f"expression: S_EXPR {m['score']:.4f}  accuracy {m['accuracy']:.4f}  "
                f"macro F1 {m['macro_f1']:.4f}  ECE {m.get('ece', float('nan')):.4f}  "
                f"({n} labelled)"
            )
        elif task == "va":
            lines.append(
                f"valence/arousal: S_VA {m['score']:.4f}  CCC valence {m['ccc_valence']:.4f}  "
                f"CCC arousal {m['ccc_arousal']:.4f}  ({n} labelled)"
            )
        elif task == "au":
            lines.append(
                f"action units: S_AU {m['score']:.4f}  accuracy {m['accuracy']:.4f}  "
                f"mean F1 {m['mean_f1']:.4f}  ({n} labelled)"
            )
    for task, reason in report.not_scored.items():
        lines.append(f"{task}: not scored ({reason})")
    lines.append(
        f"speed:    {report.images_per_second:.1f} images/s on {report.device} "
        f"(batch {report.batch_size}, {report.seconds:.1f} s)"
    )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from affectfpn.evaluation import evaluate

    if not Path(args.dataset).expanduser().exists():
        raise InputError(f"{args.dataset}: no such dataset folder or file")
    if args.exclude is not None and not Path(args.exclude).expanduser().is_file():
        raise InputError(f"--exclude {args.exclude}: no such file")
    if args.num_workers < 0:
        raise _UsageError(f"--num-workers must be >= 0, got {args.num_workers}", "evaluate")
    model = _load_model(args)
    report = evaluate(
        model,
        Path(args.dataset).expanduser(),
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        progress=not args.quiet and sys.stderr.isatty(),
        au_threshold=args.au_threshold,
        output=args.output,
        exclude=args.exclude,
        model_name=model.name_or_path,
        model_revision=model.revision,
        reliability=args.reliability,
    )
    sys.stdout.write(_evaluation_summary(report))
    if args.output:
        _note(args, f"report written to {args.output}")
    if args.reliability:
        if "expression" in report.metrics:
            _note(args, f"reliability diagram written to {args.reliability}")
        else:
            _note(args, "no reliability diagram: no expression was scored")
    return EXIT_OK
