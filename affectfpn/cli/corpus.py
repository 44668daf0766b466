"""``affectfpn corpus``: a resumable job over a corpus of photos and videos -> a Parquet dataset."""

import argparse

from affectfpn.cli._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    Command,
    _note,
    _positive_float,
    _positive_int,
    _quiet_opencv,
)


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "corpus",
        "predict a whole corpus into a resumable Parquet dataset",
        "Predict every photo and video of a corpus (a folder, a glob, a list file with one path "
        "per line, or a CSV with a 'path' column) into OUT: Parquet parts (CSV where pyarrow is "
        "missing) with one row per face, per frame for videos, and the predict table's columns "
        "plus input, kind, model, revision, frame and timestamp; inputs that fail are listed in "
        "OUT/errors. A ledger records finished inputs: after a crash or a kill, the same command "
        "with --resume does only what is left. Under 'torchrun --nproc-per-node N -m affectfpn "
        "corpus ...' each process takes its own share of the inputs (one GPU each).",
        [
            "affectfpn corpus photos/ --out results/",
            "affectfpn corpus photos/ --out results/ --resume",
            "affectfpn corpus files.txt --out results/ --model fer2013-fast-resnet18half",
            "torchrun --nproc-per-node 2 -m affectfpn corpus 'videos/*.mp4' --out results/",
        ],
        "model",
        "faces",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="folders, globs, list files (.txt, .lst, .list), CSVs with a 'path' column, files",
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="the output folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the job in --out: do only the inputs its ledger does not list (the "
        "model and options must be the same; a difference is refused and named)",
    )
    p.add_argument("-r", "--recursive", action="store_true", help="search folders recursively")
    p.add_argument(
        "-f",
        "--format",
        choices=("auto", "parquet", "csv"),
        default="auto",
        help="parts as parquet (needs affectfpn[pandas]) or csv; auto: parquet where pyarrow "
        "is installed (default: auto)",
    )
    p.add_argument(
        "--part-size",
        type=_positive_int,
        default=512,
        metavar="N",
        help="inputs per committed part: a kill loses at most one part's work (default: 512)",
    )
    p.add_argument(
        "--commit-seconds",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="also commit what is done every S seconds (default: 60)",
    )
    video = p.add_argument_group("videos")
    video.add_argument(
        "--every-n", type=_positive_int, default=1, metavar="N", help="every n-th frame"
    )
    video.add_argument(
        "--target-fps", type=_positive_float, metavar="FPS", help="about this many frames a second"
    )
    video.add_argument(
        "--smoothing", choices=("ema", "centered"), help="smooth each face track over time"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from affectfpn.corpus import CorpusJob

    _quiet_opencv(args.verbose)
    # The job lists the inputs before it loads the model: a wrong path fails at once.
    job = CorpusJob(
        list(args.inputs),
        args.out,
        model=args.model,
        revision=args.revision,
        resume=args.resume,
        device=args.device,
        recursive=args.recursive,
        min_face=args.min_face,
        output_format=args.format,
        part_size=args.part_size,
        commit_seconds=args.commit_seconds,
        progress=False if args.quiet else None,
        faces=args.faces,
        detector=args.detector,
        batch_size=args.batch_size,
        au_threshold=args.au_threshold,
        every_n=args.every_n,
        target_fps=args.target_fps,
        smoothing=args.smoothing,
    )
    summary = job.run()
    who = f"process {summary.rank} of {summary.world_size}: " if summary.world_size > 1 else ""
    _note(
        args,
        f"{who}{summary.processed} input(s) done in {summary.seconds:.1f} s ({summary.rows} "
        f"row(s), {summary.parts} part(s)); {summary.done_before} were done before; "
        f"{summary.done_before + summary.processed} of {summary.share} finished, in {args.out}",
    )
    if summary.failed:
        _note(
            args,
            f"{summary.failed} input(s) could not be read; they are listed in "
            f"{args.out}/errors (affectfpn.corpus.read_corpus(OUT, errors=True))",
        )
        return EXIT_PARTIAL
    return EXIT_OK
