"""``affectfpn video``: per-frame predictions -> CSV, ABAW2 files, annotated video, plot."""

import argparse
import itertools
import shlex
import sys
from pathlib import Path
from typing import Any

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
    _frame_index,
    _load_model,
    _note,
    _positive_float,
    _positive_int,
    _quiet_opencv,
    _UsageError,
    logger,
    predictor_from_args,
)
from affectfpn.errors import InputError


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "video",
        "predict affect frame by frame in a video",
        "Predict every (or every n-th) frame of a video, track faces across frames, and write "
        "a CSV table, ABAW2 prediction files, an annotated video and/or a valence/arousal plot. "
        "Without any of --csv/--abaw2/--annotate/--plot the CSV goes to stdout.",
        [
            "affectfpn video clip.mp4 --csv clip.csv",
            "affectfpn video clip.mp4 --every-n 5 --plot timeline.png",
            "affectfpn video clip.mp4 --annotate clip_annotated.mp4",
            "affectfpn video 10-60-1280x720.mp4 --abaw2 predictions/",
        ],
        "model",
        "faces",
    )
    p.add_argument("video", help="a video file")
    p.add_argument("--csv", metavar="FILE", help="per-frame, per-face CSV table")
    p.add_argument(
        "--abaw2",
        metavar="DIR",
        help="ABAW2 prediction text files (one per task, named after the video) into DIR",
    )
    p.add_argument("--annotate", metavar="FILE", help="the video with predictions drawn on it")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="the main face's expressions, active AUs and (when the model has them) "
        "valence/arousal over time (needs [plot])",
    )
    p.add_argument(
        "--every-n",
        type=_positive_int,
        default=1,
        metavar="N",
        help="predict every N-th frame (default: 1, every frame)",
    )
    p.add_argument(
        "--target-fps",
        type=_positive_float,
        metavar="FPS",
        help="predict about this many frames per second of video instead of --every-n",
    )
    p.add_argument(
        "--start", type=_frame_index, metavar="FRAME", help="first frame (0-based index)"
    )
    p.add_argument(
        "--end", type=_frame_index, metavar="FRAME", help="stop before this frame (exclusive)"
    )
    p.add_argument(
        "--smoothing",
        choices=("ema", "centered"),
        help="smooth predictions per face track: ema (causal) or centered (a 5-frame window)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from affectfpn.video import analyze_video, predict_video, write_video_csv

    if args.every_n != 1 and args.target_fps is not None:
        raise _UsageError("give --every-n or --target-fps, not both", "video")
    if "://" not in args.video:
        from affectfpn.io import is_still_image_file

        if not Path(args.video).expanduser().is_file():
            raise InputError(f"{args.video}: no such video file")
        if is_still_image_file(args.video):
            raise InputError(
                f"{args.video}: an image file, not a video; use "
                f"'affectfpn predict {shlex.quote(args.video)}'"
            )
    if args.plot:
        from affectfpn.errors import require_extra

        require_extra("matplotlib", "plot")  # before the (slow) model load
    model = _load_model(args)
    plot = args.plot
    _quiet_opencv(args.verbose)
    predictor = predictor_from_args(args, model, progress=False)
    selection: dict[str, Any] = {
        "every_n": args.every_n,
        "target_fps": args.target_fps,
        "start": args.start,
        "end": args.end,
        "smoothing": args.smoothing,
        "progress": False if args.quiet else None,
    }
    video = str(Path(args.video).expanduser()) if "://" not in args.video else args.video
    if not (args.csv or args.abaw2 or args.annotate or plot):
        with predict_video(predictor, video, **selection) as stream:
            first = next(stream, None)  # a video that cannot be decoded fails before any output
            frames = itertools.chain([] if first is None else [first], stream)
            rows = write_video_csv(frames, sys.stdout)  # the columns of the model's labels
        logger.info("%d row(s) for %s", rows, args.video)
        return EXIT_OK
    result = analyze_video(
        predictor,
        video,
        csv_path=args.csv,
        abaw_dir=args.abaw2,
        annotated_path=args.annotate,
        **selection,
    )
    # Only what was written is listed: the plot is drawn here, so that its absence is known.
    written = [
        f"{what} {where}"
        for what, where in (
            ("CSV", args.csv),
            ("ABAW2 files in", args.abaw2),
            ("annotated video", args.annotate),
        )
        if where
    ]
    if plot:
        from affectfpn.video import plot_timeline

        if result.face_id.size == 0:
            logger.warning("%s: no face was found; --plot %s not written", args.video, plot)
        else:
            plot_timeline(result, plot)
            written.append(f"plot {plot}")
    done = ", ".join(written) if written else "no file written"
    _note(args, f"{len(result)} frame(s) of {args.video}: {done}")
    return EXIT_OK
