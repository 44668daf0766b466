"""``affectfpn crops``: face crops from your own photos, cut as ``predict`` cuts them."""

import argparse

from affectfpn.cli._common import EXIT_OK, Command, _load_model


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "crops",
        "cut the faces out of your photos, as predict does, for fine-tuning",
        "Find the face in each photo with the detector and alignment of predict, at the "
        "model's input size, and write it as a PNG: fine-tuning data framed exactly as the "
        "faces the model will be asked about (a crop predicted with --faces crop gives what "
        "predict gives that face in the photo). SOURCE is a folder of photos (searched "
        "recursively; the crops keep their relative paths, so expression class folders carry "
        "over) or a label CSV with a path column (the crops and a copy of the CSV pointing at "
        "them). Photos without a face are listed in OUT/no-face.txt.",
        [
            "affectfpn crops my-photos/ --out my-faces/ && "
            "affectfpn finetune my-faces/train my-faces/val",
            "affectfpn crops labels/train.csv --out faces/train/",
            "affectfpn crops my-photos/ --out my-faces/ --all-faces",
        ],
        "model",
    )
    p.add_argument("source", help="a folder of photos or a label .csv (a path column)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the crops go")
    p.add_argument(
        "--all-faces",
        action="store_true",
        help="a crop per face (NAME-1.png, NAME-2.png, ... largest first); default: the "
        "largest face of each photo (always so for a CSV: a label belongs to one face)",
    )
    p.add_argument(
        "--detector",
        default="auto",
        help="auto (the embedded YuNet), yunet, haar or a YuNet .onnx file (default: auto)",
    )
    p.add_argument("--root", help="for a CSV: the folder its paths are relative to")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from affectfpn.recipes.crops import crop_faces

    report = crop_faces(
        args.source,
        args.out,
        model=_load_model(args),
        faces="all" if args.all_faces else "largest",
        detector=args.detector,
        root=args.root,
    )
    print(report.summary())
    for photo, error in report.failed:
        print(f"  unreadable: {photo}: {error}")
    return EXIT_OK
