"""``affectfpn video``: per-frame predictions -> CSV, ABAW2 files, annotated video, plot; for
one video or every video of a folder."""

import argparse
import contextlib
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
    report_failures,
)
from affectfpn.errors import InferenceError, InputError

#: The --codec choices: affectfpn.video.VIDEO_CODECS (not imported here: the parser stays light).
CODECS = ("auto", "h264", "vp9", "mp4v")
#: The failure table of a folder run, in its first output folder.
ERRORS_NAME = "errors.csv"


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "video",
        "predict affect frame by frame in a video",
        "Predict every (or every n-th) frame of a video, track faces across frames, and write "
        "a CSV table, ABAW2 prediction files, an annotated video and/or a valence/arousal plot. "
        "Without any of --csv/--abaw2/--annotate/--plot the CSV goes to stdout. Given a "
        "folder, every video in it gets its own outputs, named after it, in the folders that "
        "--csv/--annotate/--plot/--abaw2 then name; a video that cannot be read is skipped and "
        "listed in errors.csv (exit status 4).",
        [
            "affectfpn video clip.mp4 --csv clip.csv",
            "affectfpn video clip.mp4 --every-n 5 --plot timeline.png",
            "affectfpn video clip.mp4 --annotate clip_annotated.mp4",
            "affectfpn video clip.mp4 --annotate clip_annotated.webm --codec vp9",
            "affectfpn video 10-60-1280x720.mp4 --abaw2 predictions/",
            "affectfpn video clips/ --csv tables/ --annotate annotated/",
        ],
        "model",
        "faces",
    )
    p.add_argument(
        "video",
        help="a video file, or a folder of videos (then --csv, --annotate and --plot name "
        "folders, and each video's outputs are named after it)",
    )
    p.add_argument("--csv", metavar="FILE", help="per-frame, per-face CSV table")
    p.add_argument(
        "--abaw2",
        metavar="DIR",
        help="ABAW2 prediction text files (one per task, named after the video) into DIR",
    )
    p.add_argument("--annotate", metavar="FILE", help="the video with predictions drawn on it")
    p.add_argument(
        "--codec",
        choices=CODECS,
        default="auto",
        help="of --annotate: h264 (.mp4) or vp9 (.webm), which browsers play (need "
        "affectfpn[video]), or mp4v through OpenCV, which they do not; auto: vp9 for .webm, "
        "mp4v for .avi, else h264 when affectfpn[video] is installed, else mp4v (default: "
        "auto)",
    )
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
    p.add_argument(
        "--on-error",
        choices=("skip", "raise"),
        default=None,
        help="a video that cannot be read: 'skip' it (listed in errors.csv in the first output "
        "folder, exit status 4) or 'raise' (stop at it). Default: skip for a folder, raise "
        "for one file",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.every_n != 1 and args.target_fps is not None:
        raise _UsageError("give --every-n or --target-fps, not both", "video")
    if args.codec != "auto" and not args.annotate:
        raise _UsageError(f"--codec {args.codec} is for --annotate FILE", "video")
    if "://" not in args.video and Path(args.video).expanduser().is_dir():
        return _run_folder(args, Path(args.video).expanduser())
    if "://" not in args.video:
        from affectfpn.io import is_still_image_file

        if not Path(args.video).expanduser().is_file():
            raise InputError(f"{args.video}: no such video file")
        if is_still_image_file(args.video):
            raise InputError(
                f"{args.video}: an image file, not a video; use "
                f"'affectfpn predict {shlex.quote(args.video)}'"
            )
    encoding = _check_outputs(args, Path(args.annotate) if args.annotate else None)
    model = _load_model(args)
    _check_abaw2_labels(args, model)
    _quiet_opencv(args.verbose)
    predictor = predictor_from_args(args, model, progress=False)
    video = str(Path(args.video).expanduser()) if "://" not in args.video else args.video
    if not (args.csv or args.abaw2 or args.annotate or args.plot):
        from affectfpn.video import predict_video, write_video_csv

        with predict_video(predictor, video, **_selection(args)) as stream:
            first = next(stream, None)  # a video that cannot be decoded fails before any output
            frames = itertools.chain([] if first is None else [first], stream)
            rows = write_video_csv(frames, sys.stdout)  # the columns of the model's labels
        logger.info("%d row(s) for %s", rows, args.video)
        return EXIT_OK
    outputs = _Outputs(
        csv=args.csv,
        abaw2=args.abaw2,
        annotate=args.annotate,
        plot=args.plot,
        video_name=None,
    )
    try:
        count, written = _analyze(args, predictor, video, outputs, encoding)
    except (InputError, InferenceError, OSError) as error:
        if _on_error(args, folder=False) == "raise":
            raise
        outputs.remove()
        logger.warning("%s; skipped", _naming(args.video, error))
        return report_failures(
            [(args.video, str(error))], 0, None, what="video(s)", rest="have their outputs"
        )
    done = ", ".join(written) if written else "no file written"
    _note(args, f"{count} frame(s) of {args.video}: {done}")
    return EXIT_OK


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    """The video options the command line sets (frames, smoothing, progress)."""
    return {
        "every_n": args.every_n,
        "target_fps": args.target_fps,
        "start": args.start,
        "end": args.end,
        "smoothing": args.smoothing,
        "progress": False if args.quiet else None,
    }


def _check_outputs(args: argparse.Namespace, annotated: Path | None) -> Any:
    """Fail before the (slow) model load: a missing extra, a codec the file cannot hold.
    Returns the annotated video's encoding (``None`` without --annotate)."""
    if args.plot:
        from affectfpn.errors import require_extra

        require_extra("matplotlib", "plot")
    if annotated is None:
        return None
    from affectfpn.video import video_encoding

    return video_encoding(annotated, args.codec)


def _check_abaw2_labels(args: argparse.Namespace, model: Any) -> None:
    """--abaw2 with a model whose labels are not Aff-Wild2's fails once, before any video (in a
    folder run it would otherwise count as every video failing)."""
    if not args.abaw2:
        return
    from affectfpn.labels import ACTION_UNITS, EXPRESSIONS

    config = model.config
    problems = []
    if "au" in config.tasks:
        missing = [name for name in ACTION_UNITS if name not in config.action_units]
        if missing:
            problems.append(f"lacks the ABAW2 action unit(s) {', '.join(missing)}")
    if "expression" in config.tasks:
        other = [name for name in config.expressions if name not in EXPRESSIONS]
        if other:
            problems.append(f"has expression(s) {', '.join(other)} that are not ABAW2 classes")
    if problems:
        raise InputError(
            f"--abaw2: the model {'; '.join(problems)}; ABAW2 files need a model with the "
            "Aff-Wild2 labels (see 'affectfpn models'), or leave out --abaw2"
        )


def _naming(video: str, error: BaseException) -> str:
    """The error's message, with the video's name in front unless it starts with it."""
    message = str(error)
    return message if message.startswith(video) else f"{video}: {message}"


def _on_error(args: argparse.Namespace, *, folder: bool) -> str:
    if args.on_error is not None:
        return str(args.on_error)
    return "skip" if folder else "raise"


class _Outputs:
    """Where one video's outputs go; :meth:`remove` deletes those of a video that failed."""

    def __init__(
        self,
        *,
        csv: str | Path | None,
        abaw2: str | Path | None,
        annotate: str | Path | None,
        plot: str | Path | None,
        video_name: str | None,
    ) -> None:
        self.csv = csv
        self.abaw2 = abaw2
        self.annotate = annotate
        self.plot = plot
        self.video_name = video_name
        self.abaw_files: list[Path] = []

    def remove(self) -> None:
        """Delete what a failed video may have left: its table, ABAW2 files, video, plot."""
        paths = [Path(p).expanduser() for p in (self.csv, self.annotate, self.plot) if p]
        for path in [*paths, *self.abaw_files]:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def _analyze(
    args: argparse.Namespace, predictor: Any, video: str, outputs: _Outputs, encoding: Any
) -> tuple[int, list[str]]:
    """One video through analyze_video; the number of frames and the list of written files."""
    from affectfpn.video import ABAW2_TASK_DIRS, analyze_video

    if outputs.abaw2:
        name = outputs.video_name or Path(video).stem or "video"
        root = Path(outputs.abaw2).expanduser()
        outputs.abaw_files = [root / task / f"{name}.txt" for task in ABAW2_TASK_DIRS.values()]
    result = analyze_video(
        predictor,
        video,
        csv_path=outputs.csv,
        abaw_dir=outputs.abaw2,
        video_name=outputs.video_name,
        annotated_path=outputs.annotate,
        annotated_codec=encoding or "auto",
        **_selection(args),
    )
    # Only what was written is listed: the plot is drawn here, so that its absence is known.
    written = [
        f"{what} {where}"
        for what, where in (
            ("CSV", outputs.csv),
            ("ABAW2 files in", outputs.abaw2),
            ("annotated video", outputs.annotate and f"{outputs.annotate} ({encoding})"),
        )
        if where
    ]
    if outputs.plot:
        from affectfpn.video import plot_timeline

        if result.face_id.size == 0:
            logger.warning("%s: no face was found; --plot %s not written", video, outputs.plot)
        else:
            plot_timeline(result, outputs.plot)
            written.append(f"plot {outputs.plot}")
    return len(result), written


def _videos_in(folder: Path) -> list[Path]:
    """The video files of a folder (by extension; hidden files left out), sorted by name."""
    from affectfpn.io import is_video_path

    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and is_video_path(path)
    )


def _output_folder(option: str, value: str | None) -> Path | None:
    if value is None:
        return None
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(
            f"{option} {value}: a file; with a folder of videos, {option} names a folder "
            "(each video's output is named after it)"
        )
    return folder


def _run_folder(args: argparse.Namespace, folder: Path) -> int:
    """Every video of ``folder``: outputs named after each video; a failed one is skipped."""
    if not (args.csv or args.abaw2 or args.annotate or args.plot):
        raise _UsageError(
            "a folder of videos needs output folders: --csv DIR, --annotate DIR, --abaw2 DIR "
            "and/or --plot DIR",
            "video",
        )
    csv_dir = _output_folder("--csv", args.csv)
    annotate_dir = _output_folder("--annotate", args.annotate)
    plot_dir = _output_folder("--plot", args.plot)
    abaw_dir = _output_folder("--abaw2", args.abaw2)
    videos = _videos_in(folder)
    if not videos:
        from affectfpn.io import VIDEO_EXTENSIONS

        raise InputError(
            f"{args.video}: no video file in this folder (extensions: "
            f"{' '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    suffix = ".webm" if args.codec == "vp9" else ".mp4"
    encoding = _check_outputs(args, None if annotate_dir is None else annotate_dir / f"x{suffix}")
    model = _load_model(args)
    _check_abaw2_labels(args, model)
    _quiet_opencv(args.verbose)
    predictor = predictor_from_args(args, model, progress=False)
    on_error = _on_error(args, folder=True)
    failures: list[tuple[str, str]] = []
    done = 0
    used = {Path(ERRORS_NAME).stem}  # the failure table's name is taken
    for video in videos:
        name = _unique(video.stem, used)
        outputs = _Outputs(
            csv=None if csv_dir is None else csv_dir / f"{name}.csv",
            abaw2=abaw_dir,
            annotate=None if annotate_dir is None else annotate_dir / f"{name}{suffix}",
            plot=None if plot_dir is None else plot_dir / f"{name}.png",
            video_name=name,
        )
        for path in (outputs.csv, outputs.annotate, outputs.plot):
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            frames, written = _analyze(args, predictor, str(video), outputs, encoding)
        except (InputError, InferenceError, OSError) as error:
            if on_error == "raise":
                raise
            outputs.remove()
            logger.warning("%s; skipped", _naming(str(video), error))
            failures.append((str(video), str(error)))
            continue
        done += 1
        _note(args, f"{frames} frame(s) of {video}: {', '.join(written) or 'no file written'}")
    if failures:
        side = next(p for p in (csv_dir, annotate_dir, abaw_dir, plot_dir) if p is not None)
        return report_failures(
            failures, done, side / ERRORS_NAME, what="video(s)", rest="have their outputs"
        )
    _note(args, f"{done} video(s) of {args.video} done")
    return EXIT_OK


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when two videos share a name (a.mp4, a.mov)."""
    name, count = stem, 1
    while name in used:
        count += 1
        name = f"{stem}-{count}"
    used.add(name)
    return name
