"""The ``affectfpn`` command line (also ``python -m affectfpn``).

Subcommands::

    affectfpn predict   IMAGES...  faces in images -> a table (text, CSV or JSON)
    affectfpn video     VIDEO      per-frame predictions -> CSV, ABAW2 files, annotated video, plot
    affectfpn evaluate  DATASET    ABAW2 scores on an image folder, Aff-Wild2 root or label CSV
    affectfpn train     RECIPE     run a training recipe (TOML)
    affectfpn export    --onnx F   ONNX file and/or a Hub-ready folder
    affectfpn models               the registry of pretrained models and their metrics
    affectfpn download  [MODEL]    fetch weights and the face detector ahead of offline use

Run ``affectfpn COMMAND --help`` for each command's options and examples.

Conventions:

* Results go to stdout (or ``--output``); progress bars, notes and log messages to stderr.
  Progress bars appear only when stderr is a terminal; ``--quiet`` turns them off, and every
  message below an error, so that only results are printed. ``-v`` shows info messages, ``-vv``
  debug messages and tracebacks.
* ``--model`` takes a registered name (``affectfpn models``), a folder holding ``config.json`` and
  ``model.safetensors``, or a Hugging Face Hub repo id (``user/model``, with ``--revision``);
  without it the embedded default model is used.
* ``predict`` writes an aligned text table when stdout is a terminal and CSV otherwise (so
  ``affectfpn predict x.jpg > out.csv`` gives CSV); ``--format`` chooses explicitly, and with
  ``--output FILE`` the suffix decides (``.json`` JSON, ``.txt`` text table, anything else CSV).
  The CSV columns are those of :func:`affectfpn.inference.results.table_columns` (one row per
  face; an image without faces gets one row with ``face_id`` -1 and ``success`` 0); the JSON is
  an array with one :meth:`ImagePrediction.to_dict()
  <affectfpn.inference.results.ImagePrediction.to_dict>` per image; the text table is a summary
  (source, face, detection score, valence, arousal, expression and its probability, active AUs).

Exit codes:

====  =========================================================================================
0     success
1     an error the user can fix: a missing or unreadable file, an unknown model, bad data, no
      network (every :class:`~affectfpn.errors.AffectFPNError` and ``OSError``); one line
      ``affectfpn: error: <message>`` on stderr
2     a usage error (unknown option, missing argument); one line on stderr
3     an internal error (a bug): one line on stderr, and the traceback with ``--verbose``
130   interrupted (Ctrl-C)
====  =========================================================================================
"""

import argparse
import contextlib
import glob
import itertools
import json
import logging
import os
import platform
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

from affectfpn._version import __version__
from affectfpn.errors import AffectFPNError, InputError, WeightsError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

logger = logging.getLogger(__name__)
_Num = TypeVar("_Num", int, float)

PROG = "affectfpn"
#: Exit status of a successful run.
EXIT_OK = 0
#: Exit status of an error the user can fix (AffectFPNError, OSError).
EXIT_ERROR = 1
#: Exit status of a usage error (argparse).
EXIT_USAGE = 2
#: Exit status of an unexpected exception (a bug).
EXIT_INTERNAL = 3
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130

_FORMATS = ("csv", "json", "table")
_GLOB_CHARS = ("*", "?", "[")


# ------------------------------------------------------------------------------------ parsing
class _UsageError(Exception):
    """A command-line mistake found by argparse or by a command (exit status 2)."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`_UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG) :].strip() or None
        raise _UsageError(message, command)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs as written; shows defaults where they are set."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _epilog(*examples: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)


def _bounded(
    kind: Callable[[str], _Num], accept: Callable[[_Num], bool], requirement: str, noun: str
) -> Callable[[str], _Num]:
    """An argparse ``type``: parse with ``kind``, then refuse values that ``accept`` rejects."""

    def parse(text: str) -> _Num:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {value}")
        return value

    return parse


_positive_int = _bounded(int, lambda v: v >= 1, "must be at least 1", "an integer")
_frame_index = _bounded(int, lambda v: v >= 0, "must be >= 0", "a frame index")
_positive_float = _bounded(float, lambda v: v > 0, "must be > 0", "a number")
_probability = _bounded(float, lambda v: 0.0 < v < 1.0, "must be between 0 and 1", "a number")


def _common_parents() -> dict[str, _Parser]:
    """Option groups shared by several subcommands (argparse ``parents``)."""
    verbosity = _Parser(add_help=False)
    group = verbosity.add_argument_group("output control")
    # SUPPRESS: a flag given before the subcommand is not reset by the subcommand's default.
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="show info messages (-vv: debug messages and tracebacks)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars and no messages except errors: only results",
    )

    model = _Parser(add_help=False)
    group = model.add_argument_group("model")
    group.add_argument(
        "-m",
        "--model",
        metavar="NAME|DIR|REPO",
        help="a registered model name (see 'affectfpn models'), a folder with config.json and "
        "model.safetensors, or a Hugging Face Hub repo id (default: the embedded default model)",
    )
    group.add_argument("--revision", help="Hub branch, tag or commit of --model")
    group.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N, mps or auto (default: auto = CUDA, then MPS, then CPU)",
    )

    faces = _Parser(add_help=False)
    group = faces.add_argument_group("faces")
    group.add_argument(
        "--faces",
        choices=("detect", "crop"),
        default="detect",
        help="detect: find, align and predict every face (default); crop: every image already "
        "is one face crop (e.g. Aff-Wild2 cropped_aligned), no detector",
    )
    group.add_argument(
        "--detector",
        default="auto",
        metavar="NAME|FILE",
        help="face detector: auto (the embedded YuNet; Haar only where OpenCV cannot run YuNet), "
        "yunet, yunet-hub (the Hub's pinned YuNet, downloaded once), haar, or a YuNet .onnx "
        "file (default: auto)",
    )
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="faces per forward pass (default: 32)",
    )
    group.add_argument(
        "--au-threshold",
        type=_probability,
        default=0.5,
        metavar="P",
        help="an action unit is active from this probability (default: 0.5)",
    )
    return {"verbosity": verbosity, "model": model, "faces": faces}


def build_parser() -> argparse.ArgumentParser:
    """The ``affectfpn`` argument parser, with one subparser per command."""
    parents = _common_parents()
    parser = _Parser(
        prog=PROG,
        description="Facial affect analysis: valence/arousal, 7 expressions and 12 action "
        "units with feature pyramid networks.",
        epilog=_epilog(
            "affectfpn predict photo.jpg",
            "affectfpn video clip.mp4 --csv clip.csv",
            "affectfpn models",
            "affectfpn COMMAND --help",
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {__version__} (Python {platform.python_version()})",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="show info messages (-vv: debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars, no messages except errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(
        name: str, help_text: str, description: str, examples: Sequence[str], *groups: str
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=_epilog(*examples),
            formatter_class=_HelpFormatter,
            parents=[parents[g] for g in ("verbosity", *groups)],
        )

    # --- predict
    p = command(
        "predict",
        "predict affect for every face in images",
        "Predict valence/arousal, expression and action units for every face in images, "
        "folders or glob patterns. Writes an aligned text table when stdout is a terminal, CSV "
        "otherwise (one row per face; an image without faces gets one row with face_id -1 and "
        "success 0).",
        [
            "affectfpn predict photo.jpg",
            "affectfpn predict photos/ 'more/*.png' --format csv --output faces.csv",
            "affectfpn predict group.jpg --format json --annotate annotated/",
            "affectfpn predict crops/ --faces crop --model user/affect-model",
        ],
        "model",
        "faces",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument(
        "-f",
        "--format",
        choices=_FORMATS,
        help="csv (all columns), json (one object per image) or table (a summary); default: "
        "table on a terminal, else csv; with --output, from its suffix",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the results here, not stdout")
    p.add_argument(
        "--annotate",
        metavar="DIR",
        help="also write each image with boxes, labels and landmarks drawn into DIR",
    )
    p.add_argument("-r", "--recursive", action="store_true", help="search folders recursively")
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help="skip unreadable images with a warning instead of stopping",
    )
    p.set_defaults(handler=_cmd_predict)

    # --- video
    p = command(
        "video",
        "predict affect frame by frame in a video",
        "Predict every (or every n-th) frame of a video, track faces across frames, and write "
        "a CSV table, ABAW2 prediction files, an annotated video and/or a valence/arousal plot. "
        "Without any of --csv/--abaw2/--annotate/--plot the CSV goes to stdout.",
        [
            "affectfpn video clip.mp4 --csv clip.csv",
            "affectfpn video clip.mp4 --every-n 5 --plot va.png",
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
    p.add_argument("--plot", metavar="FILE", help="valence and arousal over time (needs [plot])")
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
    p.set_defaults(handler=_cmd_video)

    # --- evaluate
    p = command(
        "evaluate",
        "score a model on a labelled dataset (ABAW2 metrics)",
        "Score a model on labelled data: a folder of expression class folders (FER2013 test), "
        "an Aff-Wild2 root (its validation split) or a label CSV. Prints accuracy, macro F1 and "
        "S_EXPR for expressions, CCC and S_VA for valence/arousal, F1 and S_AU for action "
        "units, for every task that both the model and the labels have.",
        [
            "affectfpn evaluate data/fer2013/test --exclude data/fer2013/overlap_with_train.txt",
            "affectfpn evaluate /data/Aff-Wild2 --model user/affect-model --output report.json",
            "affectfpn evaluate labels.csv --batch-size 128 --device cuda",
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
    p.set_defaults(handler=_cmd_evaluate)

    # --- train
    p = command(
        "train",
        "run a training recipe",
        "Train a model from a recipe file (TOML): a plain training run, or the paper's "
        "teacher-student pipeline in stages. An interrupted run resumes where it stopped. "
        "Prints the run's summary as JSON.",
        [
            "affectfpn train recipes/fer2013.toml",
            "affectfpn train recipes/fer2013.toml --set train.epochs=3 --set train.lr=0.01",
            "affectfpn train recipes/abaw2-teacher-student.toml --stage teachers",
            "affectfpn train recipes/fer2013.toml --check",
        ],
    )
    p.add_argument("recipe", help="the recipe file (TOML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument(
        "--stage",
        dest="stages",
        action="append",
        default=None,
        metavar="STAGE",
        help="teacher-student recipes: run only this stage (teachers, pseudo, student, "
        "evaluate); repeatable",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only load and check the recipe (with --set applied), do not train",
    )
    p.set_defaults(handler=_cmd_train)

    # --- export
    p = command(
        "export",
        "export a model to ONNX and/or a Hub-ready folder",
        "Export a model: --onnx writes an ONNX file that takes the normalised N x 3 x H x W "
        "float input and returns va, expression_logits and au_logits (the model's tasks), with "
        "the preprocessing (input size, mean, std, labels) in its metadata; --folder writes "
        "config.json, model.safetensors and a model card, ready for push_to_hub.",
        [
            "affectfpn export --model user/affect-model --onnx affect.onnx",
            "affectfpn export --onnx affect.onnx --opset 18 --static-batch",
            "affectfpn export --model runs/fer2013/best --folder hub-ready/",
        ],
        "model",
    )
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX file")
    p.add_argument(
        "--opset", type=_positive_int, default=17, metavar="N", help="ONNX opset (default: 17)"
    )
    p.add_argument(
        "--static-batch",
        action="store_true",
        help="fix the batch size at 1 (default: a dynamic batch axis)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the onnx.checker validation")
    p.add_argument("--folder", metavar="DIR", help="save a Hub-ready copy (save_pretrained)")
    p.set_defaults(handler=_cmd_export)

    # --- models
    p = command(
        "models",
        "list the registered pretrained models",
        "List the registered models with their tasks, size, input, and the metrics measured "
        "on named data. The default model is marked with *.",
        ["affectfpn models", "affectfpn models --json"],
    )
    p.add_argument("--json", action="store_true", help="full entries as JSON")
    p.set_defaults(handler=_cmd_models)

    # --- download
    p = command(
        "download",
        "fetch weights and the face detector for offline use",
        "Download a model's weights (a registered name or a Hub repo id) into the Hugging Face "
        "cache, check them, and print where they are, with the face detector's file. Afterwards "
        "they load with no network (HF_HUB_OFFLINE=1). The YuNet detector ships inside the "
        "package; --hub-detector also fetches the Hub's pinned YuNet (--detector yunet-hub).",
        [
            "affectfpn download",
            "affectfpn download user/affect-model --revision v1.0",
            "affectfpn download --detector-only --hub-detector",
        ],
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="NAME|REPO",
        help="registered model name or Hub repo id (default: the default model)",
    )
    p.add_argument("--revision", help="Hub branch, tag or commit")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--no-detector", action="store_true", help="skip the face detector")
    what.add_argument("--detector-only", action="store_true", help="only the face detector")
    p.add_argument(
        "--hub-detector",
        action="store_true",
        help="also download the Hub's pinned YuNet (default: the embedded one, no download)",
    )
    p.set_defaults(handler=_cmd_download)
    return parser


# ------------------------------------------------------------------------------------ helpers
class _LevelFormatter(logging.Formatter):
    def __init__(self, with_names: bool) -> None:
        super().__init__()
        self.with_names = with_names

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = _cli_words(message)
        if record.exc_info and self.with_names:
            message += "\n" + self.formatException(record.exc_info)
        where = f"[{record.name}] " if self.with_names else ""
        return f"{PROG}: {record.levelname.lower()}: {where}{message}"


@contextlib.contextmanager
def _logging(verbose: int, quiet: bool, default: int) -> Iterator[None]:
    """Route the ``affectfpn`` loggers to stderr at the level the flags ask for."""
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    elif quiet:
        level = logging.ERROR
    else:
        level = default
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter(with_names=verbose > 0))
    root = logging.getLogger("affectfpn")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    hf_bars: Any = None
    if quiet:
        with contextlib.suppress(ImportError):
            from huggingface_hub.utils import (
                are_progress_bars_disabled,
                disable_progress_bars,
                enable_progress_bars,
            )

            if not are_progress_bars_disabled():
                disable_progress_bars()
                hf_bars = enable_progress_bars
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        if hf_bars is not None:
            hf_bars()


def _note(args: argparse.Namespace, message: str) -> None:
    """A short note for the user on stderr (not a result), unless ``--quiet``."""
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _os_message(err: OSError) -> str:
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def _load_model(args: argparse.Namespace) -> Any:
    """The model that ``--model`` / ``--revision`` / ``--device`` name, in eval mode."""
    from affectfpn.models import AffectFPN, registry

    name = args.model
    if name is None:
        try:
            registry.default_model_name()
        except WeightsError:
            raise WeightsError(
                "no default model is registered in this affectfpn build: pass --model with a "
                "registered name (see 'affectfpn models'), a model folder or a Hub repo id"
            ) from None
    model = AffectFPN.from_pretrained(name, revision=args.revision, device=args.device)
    logger.info("model %s loaded (%s)", model.name_or_path, ", ".join(model.config.tasks))
    return model


def _quiet_opencv(verbose: int) -> None:
    """Silence OpenCV's own (C++) warnings on stderr unless ``--verbose``."""
    if verbose:
        return
    import cv2

    with contextlib.suppress(AttributeError, cv2.error):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _check_inputs(inputs: Sequence[str]) -> None:
    """Fail early (before loading a model) on paths that do not exist or globs with no match."""
    from affectfpn.io import is_video_path, looks_like_video

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file() and (is_video_path(path) or looks_like_video(_head(path))):
            raise InputError(
                f"{text}: a video file, not an image; use 'affectfpn video {shlex.quote(text)}'"
            )
        if path.exists():
            continue
        if any(ch in text for ch in _GLOB_CHARS):
            if not glob.glob(os.path.expanduser(text), recursive=True):
                raise InputError(f"{text}: the pattern matches no file")
            continue
        raise InputError(f"{text}: no such file or directory")


def _head(path: Path, size: int = 64) -> bytes:
    """The first bytes of a file (empty when it cannot be read: reading it reports why)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def _output_format(choice: str | None, output: str | None) -> str:
    if choice is not None:
        return choice
    if output is not None:
        suffix = Path(output).suffix.lower()
        return {".json": "json", ".txt": "table"}.get(suffix, "csv")
    return "table" if sys.stdout.isatty() else "csv"


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[TextIO]:
    """stdout, or a file written through a temporary file that replaces ``path`` on success
    (so a failed run leaves no half-written table behind)."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """Columns padded to their widest cell; columns in ``numeric`` right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)]) + "\n"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


# ------------------------------------------------------------------------------------ predict
_TABLE_HEADER = ("source", "face", "score", "valence", "arousal", "expression", "p", "active AUs")


def _table_rows(result: Any) -> list[list[str]]:
    if not result.faces:
        return [[result.source, "-", "-", "-", "-", "(no face)", "-", "-"]]
    rows = []
    for face in result.faces:
        va = face.va
        expression = face.expression
        rows.append(
            [
                result.source,
                str(face.face_id),
                "-" if face.score is None else f"{face.score:.2f}",
                _signed(None if va is None else va.valence),
                _signed(None if va is None else va.arousal),
                "-" if expression is None else expression.label,
                "-" if expression is None else f"{expression.score:.2f}",
                "-" if face.aus is None else (" ".join(face.aus.active) or "none"),
            ]
        )
    return rows


def _annotated(results: Iterator[Any], folder: Path) -> Iterator[Any]:
    """Pass results through, writing each image with its prediction drawn into ``folder``."""
    from PIL import Image

    from affectfpn.inference.draw import draw

    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for result in results:
        source = Path(result.source)
        name = source.name
        if source.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
            name = source.stem + ".png"
        stem, suffix = Path(name).stem, Path(name).suffix
        count = 1
        while name in used:  # the same file name from two folders
            count += 1
            name = f"{stem}-{count}{suffix}"
        used.add(name)
        canvas = draw(result.source, result)
        Image.fromarray(canvas).save(folder / name)
        logger.info("annotated %s -> %s", result.source, folder / name)
        yield result


def _cmd_predict(args: argparse.Namespace) -> int:
    from affectfpn.inference.predictor import Predictor
    from affectfpn.inference.results import write_csv

    fmt = _output_format(args.format, args.output)
    _check_inputs(args.inputs)
    model = _load_model(args)
    config = model.config
    _quiet_opencv(args.verbose)
    predictor = Predictor(
        model,
        faces=args.faces,
        detector=args.detector,
        batch_size=args.batch_size,
        au_threshold=args.au_threshold,
        progress=False if args.quiet else None,
        on_error="skip" if args.skip_errors else "raise",
        recursive=args.recursive,
    )
    results: Iterator[Any] = predictor.predict_iter(list(args.inputs))
    # The first result before any output: an input that fails at once leaves stdout empty.
    first = next(results, None)
    results = itertools.chain([] if first is None else [first], results)
    if args.annotate:
        results = _annotated(results, Path(args.annotate).expanduser())
    images = faces = 0

    def counted(items: Iterator[Any]) -> Iterator[Any]:
        nonlocal images, faces
        for item in items:
            images += 1
            faces += len(item.faces)
            yield item

    with _open_output(args.output) as out:
        if fmt == "csv":
            write_csv(
                counted(results),
                out,
                expressions=config.expressions,
                action_units=config.action_units,
            )
        elif fmt == "json":
            out.write("[")
            for i, result in enumerate(counted(results)):
                out.write(("," if i else "") + "\n  " + json.dumps(result.to_dict()))
            out.write("\n]\n")
        else:
            rows = [row for result in counted(results) for row in _table_rows(result)]
            out.write(_format_table(_TABLE_HEADER, rows, numeric={1, 2, 3, 4, 6}))
    where = f" -> {args.output}" if args.output else ""
    annotated = f"; annotated images in {args.annotate}" if args.annotate else ""
    logger.info("%d face(s) in %d image(s)%s%s", faces, images, where, annotated)
    if args.output:
        _note(args, f"{faces} face(s) in {images} image(s) written to {args.output}{annotated}")
    return EXIT_OK


# ------------------------------------------------------------------------------------ video
def _cmd_video(args: argparse.Namespace) -> int:
    from affectfpn.inference.predictor import Predictor
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
    if plot and "va" not in model.config.tasks:
        why = (
            f"--plot {plot}: the model predicts no valence/arousal (its tasks: "
            f"{', '.join(model.config.tasks)})"
        )
        if not (args.csv or args.abaw2 or args.annotate):
            raise InputError(f"{why}; use a model with the va task, or ask for --csv")
        logger.warning("%s; the plot is not written", why)
        plot = None
    _quiet_opencv(args.verbose)
    predictor = Predictor(
        model,
        faces=args.faces,
        detector=args.detector,
        batch_size=args.batch_size,
        au_threshold=args.au_threshold,
        progress=False,
    )
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
            rows = write_video_csv(
                frames,
                sys.stdout,
                expressions=model.config.expressions,
                action_units=model.config.action_units,
            )
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
        import numpy as np

        from affectfpn.video import plot_va

        if np.isnan(result.va).all():
            logger.warning(
                "%s: no face with valence/arousal was found; --plot %s not written",
                args.video,
                plot,
            )
        else:
            plot_va(result, plot)
            written.append(f"plot {plot}")
    done = ", ".join(written) if written else "no file written"
    _note(args, f"{len(result)} frame(s) of {args.video}: {done}")
    return EXIT_OK


# ------------------------------------------------------------------------------------ evaluate
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
                f"macro F1 {m['macro_f1']:.4f}  ({n} labelled)"
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
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
    )
    sys.stdout.write(_evaluation_summary(report))
    if args.output:
        _note(args, f"report written to {args.output}")
    return EXIT_OK


# ------------------------------------------------------------------------------------ train
def _short(summary: Any) -> Any:
    if isinstance(summary, dict):
        return {k: _short(v) for k, v in summary.items() if k != "history"}
    return summary


def _cmd_train(args: argparse.Namespace) -> int:
    from affectfpn.recipes.recipe import load_recipe, run_recipe

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("train.progress=false")
    recipe = load_recipe(Path(args.recipe).expanduser(), overrides)
    if args.check:
        print(
            f"{recipe.source}: a valid {recipe.kind} recipe {recipe.name!r}, output "
            f"{recipe.output_dir}"
        )
        return EXIT_OK
    summary = run_recipe(recipe, stages=args.stages)
    print(json.dumps(_short(summary), indent=2, default=str))
    return EXIT_OK


# ------------------------------------------------------------------------------------ export
def _card_for(model: Any) -> dict[str, Any] | None:
    """Model-card metadata of a registered model (``None`` for other models)."""
    from affectfpn.models import registry

    name = getattr(model, "name_or_path", None)
    if not isinstance(name, str) or name not in registry.model_names():
        return None
    info = registry.get_model_info(name)
    return {
        "name": info.name,
        "description": info.description,
        "metrics": {k: dict(v) for k, v in info.metrics.items()},
        "license": info.license,
        "datasets": list(info.datasets),
        "recipe": info.recipe,
    }


def _cmd_export(args: argparse.Namespace) -> int:
    if not args.onnx and not args.folder:
        raise _UsageError("give --onnx FILE and/or --folder DIR", "export")
    if args.onnx:
        from affectfpn.errors import require_extra

        require_extra("onnx", "onnx")  # before the (slow) model load
    model = _load_model(args)
    if args.folder:
        folder = model.save_pretrained(Path(args.folder).expanduser(), model_card=_card_for(model))
        print(f"folder  {folder}")
    if args.onnx:
        from affectfpn.export import export_onnx

        path = export_onnx(
            model,
            Path(args.onnx).expanduser(),
            opset=args.opset,
            dynamic_batch=not args.static_batch,
            check=not args.no_check,
        )
        print(f"onnx    {path}")
    return EXIT_OK


# ------------------------------------------------------------------------------------ models
def _metrics_text(metrics: Any) -> str:
    parts = []
    for data, values in metrics.items():
        shown = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
        )
        parts.append(f"{data}: {shown}")
    return "; ".join(parts) or "-"


def _cmd_models(args: argparse.Namespace) -> int:
    from affectfpn.models import registry

    infos = registry.list_models()
    try:
        default: str | None = registry.default_model_name()
    except WeightsError:
        default = None
    if args.json:
        entries = [dict(info.to_dict(), default=info.name == default) for info in infos]
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    if not infos:
        _note(args, "no models are registered; pass --model with a folder or a Hub repo id")
        return EXIT_OK
    rows = []
    for info in infos:
        rows.append(
            [
                info.name + (" *" if info.name == default else ""),
                "+".join(info.tasks),
                f"{info.backbone}{'+fpn' if info.neck == 'fpn' else ''}",
                f"{info.input_size[0]}x{info.input_size[1]}",
                f"{info.num_params / 1e6:.1f}M",
                info.source,
                _metrics_text(info.metrics),
            ]
        )
    header = ("name", "tasks", "architecture", "input", "params", "source", "metrics")
    sys.stdout.write(_format_table(header, rows, numeric={4}))
    return EXIT_OK


# ------------------------------------------------------------------------------------ download
def _cmd_download(args: argparse.Namespace) -> int:
    from affectfpn.models import AffectFPN, registry
    from affectfpn.models.hub import WEIGHTS_NAME, download, load_folder

    lines: list[tuple[str, str, str]] = []
    if not args.detector_only:
        name = args.model
        if name is None:
            try:
                name = registry.default_model_name()
            except WeightsError:
                raise WeightsError(
                    "no default model is registered in this affectfpn build: name a model "
                    "(affectfpn download NAME|REPO), or pass --detector-only"
                ) from None
        if name in registry.model_names():
            info = registry.get_model_info(name)
            if info.source == "package":
                folder = registry.package_weights_dir(info)
                label = f"{info.name} (embedded, no download needed)"
            else:
                revision = args.revision or info.revision
                folder = download(info.location, revision=revision)
                label = f"{info.name} = {info.location}@{revision}"
        elif Path(name).expanduser().is_dir():
            folder = Path(name).expanduser()
            label = f"{name} (a local folder, no download needed)"
        else:
            folder = download(name, revision=args.revision)
            label = f"{name}@{folder.name}"
        # Load once: a truncated or mismatched download fails now, not when offline.
        load_folder(AffectFPN, folder, source=label)
        lines.append(("model", label, str(folder / WEIGHTS_NAME)))
    if not args.no_detector:
        from affectfpn.inference.detectors import default_yunet, download_yunet

        if args.hub_detector:
            lines.append(("detector", "YuNet (Hub, pinned)", str(download_yunet())))
        else:
            lines.append(("detector", "YuNet (embedded, no download needed)", str(default_yunet())))
    sys.stdout.write(_format_table(("what", "name", "path"), lines, numeric=set()))
    return EXIT_OK


# ------------------------------------------------------------------------------------ main
#: Library messages name keyword arguments (``recursive=True``, ``detector='yunet'``): right for
#: Python users, wrong on the command line. These rewrites, applied to the errors and warnings
#: the CLI prints, name its flags instead (the library's messages are unchanged).
_CLI_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\brecursive=True\b", "-r (--recursive)"),
        (r"\bon_error=(['\"])skip\1", "--skip-errors"),
        (
            r"if you trust the file, pass a larger max_pixels= or downscale it first",
            "if you trust the file, downscale it first",
        ),
        (
            r"pass detector=(['\"])(?P<file>[^'\"]*)\1 to predict \(--detector FILE on the "
            r"command line, YuNetDetector\(model_path=\.\.\.\) in code\)",
            r"pass --detector \g<file>",
        ),
        (r"\bmodel_path=None for the embedded one", "--detector yunet for the embedded one"),
        (
            r"pass cascade_path= to a copy of it, or use the YuNet detector",
            "use the YuNet detector (--detector yunet)",
        ),
        (
            r"; pass cascade_path= to an OpenCV cascade XML such as \S+",
            "; use the YuNet detector (--detector yunet)",
        ),
        (r"\(a private repo needs token=\)", "(a private repo needs a token: set HF_TOKEN)"),
        (r"\band pass token=", "and set HF_TOKEN"),
        (
            r", (a path to a YuNet \.onnx file), or an object with a detect\(rgb\) -> "
            r"list\[Detection\] method",
            r", or \1",
        ),
        (
            r"read it with affectfpn\.video\.predict_video\(\) or analyze_video\(\) "
            r"\('affectfpn video' on the command line\)",
            "use 'affectfpn video' for it",
        ),
    )
)
#: Keyword arguments and the flags that set them.
_CLI_FLAGS = {
    "faces": "--faces",
    "detector": "--detector",
    "batch_size": "--batch-size",
    "au_threshold": "--au-threshold",
    "device": "--device",
    "revision": "--revision",
    "every_n": "--every-n",
    "target_fps": "--target-fps",
    "start": "--start",
    "end": "--end",
    "smoothing": "--smoothing",
    "exclude": "--exclude",
    "num_workers": "--num-workers",
    "opset": "--opset",
}
_NAMES = "|".join(sorted(_CLI_FLAGS, key=len, reverse=True))
# name=value, not inside a path or a frame name ("clip.mp4#frame=3", "/data/end=1/x.png");
# the value is a quoted string, a number, True, False or None.
_KEYWORD_VALUE = re.compile(
    rf"(?<![\w.#/=-])(?P<name>{_NAMES})="
    r"(?:'(?P<single>[^']*)'|\"(?P<double>[^\"]*)\"|(?P<plain>-?\d+(?:\.\d+)?|True|False|None))"
    r"(?=[\s,;:)]|$)"
)
# A bare keyword name in "batch_size must be ...": only names with an underscore, which
# English does not use.
_KEYWORD_NAME = re.compile(
    rf"(?<![\w.#/=-])(?P<name>{'|'.join(n for n in _CLI_FLAGS if '_' in n)})(?=[\s,;:)]|$)"
)


def _cli_words(message: str) -> str:
    """``message`` with keyword arguments replaced by the command line's flags."""
    for pattern, replacement in _CLI_PHRASES:
        message = pattern.sub(replacement, message)

    def flag_value(match: re.Match[str]) -> str:
        value = next(v for v in match.group("single", "double", "plain") if v is not None)
        return f"{_CLI_FLAGS[match.group('name')]} {value}"

    message = _KEYWORD_VALUE.sub(flag_value, message)
    return _KEYWORD_NAME.sub(lambda m: _CLI_FLAGS[m.group("name")], message)


def _error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = args.handler
    default_level = logging.INFO if args.command == "train" else logging.WARNING
    with _logging(args.verbose, args.quiet, default_level):
        if args.quiet:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return handler(args)
        return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        where = f"{PROG} {err.command}" if err.command else PROG
        _error(f"{err} (see '{where} --help')")
        return EXIT_USAGE
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    args.verbose = getattr(args, "verbose", 0) or 0
    args.quiet = bool(getattr(args, "quiet", False)) and args.verbose == 0
    try:
        return _run(args)
    except _UsageError as err:
        where = f"{PROG} {err.command}" if err.command else PROG
        _error(f"{err} (see '{where} --help')")
        return EXIT_USAGE
    except AffectFPNError as err:
        if args.verbose >= 2:
            traceback.print_exc()
        _error(_cli_words(str(err)))
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as err:
        if args.verbose >= 2:
            traceback.print_exc()
        _error(_os_message(err))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if _is_out_of_memory(err):
            _error(f"out of memory ({_one_line(str(err))[:200]}); try a smaller --batch-size")
            return EXIT_ERROR
        if args.verbose:
            traceback.print_exc()
            hint = "the traceback is above"
        else:
            hint = "run again with --verbose for the traceback"
        _error(
            f"internal error: {type(err).__name__}: {err} ({hint}; please report it at "
            "https://github.com/affectfpn/affectfpn/issues)"
        )
        return EXIT_INTERNAL


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(err, oom)


if __name__ == "__main__":
    raise SystemExit(main())
