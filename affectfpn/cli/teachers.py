"""``affectfpn teachers``: AU pseudo labels from external teachers, and a student measured
against them.

Subcommands (:mod:`affectfpn.recipes.teachers`, :mod:`affectfpn.recipes.agreement`)::

    affectfpn teachers blendshapes  score an image folder with MediaPipe (in its own Python)
    affectfpn teachers table        blendshape CSV -> label table
    affectfpn teachers openface     OpenFace 2.0 CSV -> label table
    affectfpn teachers evaluate     each mapped AU against expression-implied labels
    affectfpn teachers fit          refit the mapping's calibration on training images
    affectfpn teachers agreement    a student's AU outputs against the teacher's table
"""

import argparse

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
    _load_model,
    _Parser,
    _positive_int,
    _probability,
    command_adder,
)

_TABLE = "label table to write (.csv or .json)"


def add_parser(command: Command) -> None:
    """Add the subcommand group to the parser (``command`` is
    :data:`affectfpn.cli._common.Command`)."""
    group = command(
        "teachers",
        "AU pseudo labels from external teachers (MediaPipe, OpenFace) and a student's agreement",
        "Turn the output of teachers outside affectfpn into the label tables a recipe reads "
        "(pseudo_labels = 'table.csv'): MediaPipe Face Landmarker blendshapes, run in a Python "
        "of their own (mediapipe clashes with opencv-python), mapped to action units; OpenFace "
        "2.0 AU columns. Then measure a trained student against its teacher's answers. "
        "See docs/action-units.md.",
        [
            "affectfpn teachers blendshapes --root data/fer2013/val --out bs-val.csv "
            "--python .mpvenv/bin/python --model face_landmarker.task",
            "affectfpn teachers table --scores bs-val.csv --out au-pseudo/val.csv",
            "affectfpn teachers agreement --model runs/mt/best --root data/fer2013/test "
            "--table au-pseudo/test.csv",
            "affectfpn teachers COMMAND --help",
        ],
    )
    sub = group.add_subparsers(
        dest="teachers_command", metavar="COMMAND", parser_class=_Parser, required=True
    )
    subcommand = command_adder(sub, example_prefix="affectfpn teachers {name} ")

    p = subcommand(
        "blendshapes",
        "score an image folder with MediaPipe's Face Landmarker (in its own Python)",
        "Run affectfpn/recipes/blendshapes.py in a Python that has mediapipe==1.2.3 over a "
        "folder of class folders and write the 52 blendshape scores of each image (keys as a "
        "recipe's imagefolder dataset gives them).",
        [
            "--root data/fer2013/val --out bs-val.csv --python .mpvenv/bin/python "
            "--model shared/models/mediapipe/face_landmarker.task --workers 2",
        ],
    )
    p.add_argument("--root", required=True, help="image folder of class folders")
    p.add_argument("--out", required=True, help="blendshape CSV to write")
    p.add_argument(
        "--python",
        default=None,
        metavar="PYTHON",
        help="a Python that has mediapipe (default: $AFFECTFPN_MEDIAPIPE_PYTHON, else this one)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="FILE",
        help="the face_landmarker.task bundle (default: "
        "$AFFECTFPN_SHARED/models/mediapipe/face_landmarker.task)",
    )
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="processes (1)")
    p.set_defaults(handler=_blendshapes)

    p = subcommand(
        "table",
        "blendshape CSV -> AU label table",
        "Map blendshape scores to calibrated AU probabilities (the kept units unless --units) "
        "and write them as a label table; faces not found keep their key with no label.",
        [
            "--scores bs-train.csv --out au-pseudo/train.csv",
            "--scores bs-train.csv --out t.csv --units AU1 AU2 AU12 AU26 "
            "--key-prefix 0-imagefolder:",
        ],
    )
    p.add_argument("--scores", required=True, help="blendshape CSV (teachers blendshapes)")
    p.add_argument("--out", required=True, help=_TABLE)
    p.add_argument("--units", nargs="*", default=None, help="AUs to label (default: kept ones)")
    p.add_argument("--key-prefix", default="", help="prepended to every key")
    p.set_defaults(handler=_table)

    p = subcommand(
        "openface",
        "OpenFace 2.0 FeatureExtraction CSV -> AU label table",
        "Read the AUxx_c presence columns of an OpenFace 2.0 CSV; keys <video>/<frame:05d> as "
        "Aff-Wild2's frames (--key-format changes them).",
        ["--csv video7.csv --out openface.csv"],
    )
    p.add_argument("--csv", required=True, help="OpenFace 2.0 FeatureExtraction CSV")
    p.add_argument("--out", required=True, help=_TABLE)
    p.add_argument("--video", default=None, help="the {video} of the keys (default: CSV name)")
    p.add_argument(
        "--key-format", default="{video}/{frame:05d}", help="keys from {video}, {frame}, {face_id}"
    )
    p.add_argument(
        "--min-confidence", type=float, default=0.0, help="frames below it get no label (0)"
    )
    p.set_defaults(handler=_openface)

    for name, help_text, description, handler in (
        (
            "evaluate",
            "each mapped AU's ROC AUC against expression-implied labels",
            "Measure the blendshape -> AU mapping on scored images of class folders: per unit "
            "the ROC AUC against the AUs the expression labels imply, and the active shares.",
            _evaluate,
        ),
        (
            "fit",
            "refit the mapping's calibration on training images; prints it",
            "Fit each mapped unit's (slope, intercept) on scored training images against the "
            "AUs their expression labels imply (class-balanced logistic regression).",
            _fit,
        ),
    ):
        p = subcommand(
            name,
            help_text,
            description,
            ["--scores bs-val.csv --root data/fer2013/val"],
        )
        p.add_argument("--scores", required=True, help="blendshape CSV (teachers blendshapes)")
        p.add_argument("--root", required=True, help="the image folder the scores came from")
        p.set_defaults(handler=handler)

    p = subcommand(
        "agreement",
        "a student's AU outputs against the teacher's table",
        "Run a model over an image folder as 'affectfpn evaluate' does and compare its AU "
        "decisions with the teacher's label table, key by key: per unit the ROC AUC and the "
        "agreement, each unit's active share per expression, and the expression scores.",
        [
            "--model runs/mt/best --root data/fer2013/test --table au-pseudo/test.csv "
            "--exclude data/fer2013/overlap_with_train.txt --json agreement.json",
        ],
        "model",
    )
    p.add_argument("--root", required=True, help="image folder of class folders (FER2013 test)")
    p.add_argument("--table", required=True, help="the teacher's label table for that folder")
    p.add_argument(
        "--exclude", default=None, metavar="FILE", help="text file of relative paths to leave out"
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="(256)")
    p.add_argument(
        "--amp", default="auto", help="mixed precision: auto, on, off, bf16 or fp16 (auto)"
    )
    p.add_argument(
        "--num-workers", type=int, default=0, metavar="N", help="image-reading processes (0)"
    )
    p.add_argument(
        "--threshold", type=_probability, default=0.5, metavar="P", help="active from P (0.5)"
    )
    p.set_defaults(handler=_agreement)


def _blendshapes(args: argparse.Namespace) -> int:
    from affectfpn.recipes.teachers import read_blendshape_csv, run_blendshape_teacher

    run_blendshape_teacher(
        args.out,
        root=args.root,
        python_executable=args.python,
        model=args.model,
        workers=args.workers,
    )
    scores = read_blendshape_csv(args.out)
    print(f"{args.out}: {len(scores)} images, face found in {scores.found_rate:.1%}")
    return EXIT_OK


def _table(args: argparse.Namespace) -> int:
    from affectfpn.recipes.teachers import blendshape_table

    table = blendshape_table(args.scores, units=args.units, key_prefix=args.key_prefix)
    table.save(args.out)
    print(f"{args.out}: {table.labels_summary()}")
    return EXIT_OK


def _openface(args: argparse.Namespace) -> int:
    from affectfpn.recipes.teachers import openface_table

    table = openface_table(
        args.csv,
        video=args.video,
        key_format=args.key_format,
        min_confidence=args.min_confidence,
    )
    table.save(args.out)
    print(f"{args.out}: {table.labels_summary()}")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from affectfpn.recipes.teachers import (
        BLENDSHAPE_AU_MAP,
        evaluate_mapping,
        folder_expressions,
        format_evaluation,
        read_blendshape_csv,
    )

    scores = read_blendshape_csv(args.scores)
    expressions = folder_expressions(scores.keys, args.root)
    print(f"face found: {scores.found_rate:.2%} of {len(scores)}")
    print(format_evaluation(evaluate_mapping(scores, expressions), BLENDSHAPE_AU_MAP))
    return EXIT_OK


def _fit(args: argparse.Namespace) -> int:
    from affectfpn.recipes.teachers import fit_calibration, folder_expressions, read_blendshape_csv

    scores = read_blendshape_csv(args.scores)
    for m in fit_calibration(scores, folder_expressions(scores.keys, args.root)):
        print(f"{m.au}: slope={m.slope:.4f}, intercept={m.intercept:.4f}")
    return EXIT_OK


def _agreement(args: argparse.Namespace) -> int:
    from affectfpn.recipes.agreement import agreement_to_json, format_agreement, student_agreement

    student = _load_model(args)
    result = student_agreement(
        student,
        args.root,
        args.table,
        exclude=args.exclude,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        num_workers=args.num_workers,
        threshold=args.threshold,
        progress=not args.quiet,
    )
    result["model"] = args.model if args.model is not None else student.name_or_path
    result["table"] = args.table
    print(format_agreement(result))
    if args.json is not None:
        agreement_to_json(result, args.json)
    return EXIT_OK
