"""What the command line's commands share: the parser classes, option groups, logging set-up and
small helpers for inputs and outputs."""

import argparse
import contextlib
import glob
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

from affectfpn.errors import UNSET, AffectFPNError, Hint, InputError, WeightsError

logger = logging.getLogger("affectfpn.cli")
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
#: Exit status of a run that finished but skipped inputs it could not read (listed).
EXIT_PARTIAL = 4
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130

_FORMATS = ("csv", "json", "table", "parquet")


#: Adds one subcommand's parser (see :func:`affectfpn.cli.app.build_parser`).
Command = Callable[..., argparse.ArgumentParser]


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
_pixels = _bounded(float, lambda v: v >= 0, "must be >= 0", "a number of pixels")


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
        "--min-face",
        type=_pixels,
        default=None,  # the detector's own default (affectfpn.inference.detectors)
        metavar="PIXELS",
        help="smallest face YuNet must find, in image pixels: images are shrunk before "
        "detection as far as that allows (faster); 0 detects at full size (default: 32)",
    )
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="faces per forward pass (default: 64)",
    )
    group.add_argument(
        "--au-threshold",
        type=_probability,
        default=0.5,
        metavar="P",
        help="an action unit is active from this probability (default: 0.5)",
    )
    return {"verbosity": verbosity, "model": model, "faces": faces}


def command_adder(sub: Any, *, example_prefix: str = "") -> Command:
    """The :data:`Command` that adds one subcommand to the subparsers ``sub``: its help,
    description, examples (each prefixed by ``example_prefix``, where ``{name}`` is the
    command's name) and the shared option groups it names (``-v``/``-q`` always)."""
    parents = _common_parents()

    def command(
        name: str, help_text: str, description: str, examples: Sequence[str], *groups: str
    ) -> argparse.ArgumentParser:
        prefix = example_prefix.format(name=name)
        parser: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=_epilog(*(prefix + line for line in examples)),
            formatter_class=_HelpFormatter,
            parents=[parents[g] for g in ("verbosity", *groups)],
        )
        return parser

    return command


# ------------------------------------------------------------------------------------ helpers
class _LevelFormatter(logging.Formatter):
    def __init__(self, with_names: bool) -> None:
        super().__init__()
        self.with_names = with_names

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING and isinstance(record.args, tuple):
            # An error passed as an argument of a warning ("skipped %s: %s") in CLI words.
            record = logging.makeLogRecord(record.__dict__)
            record.args = tuple(
                cli_message(arg) if isinstance(arg, AffectFPNError) else arg
                for arg in record.args  # type: ignore[union-attr]
            )
        message = record.getMessage()
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
    from affectfpn.io import has_glob_chars, is_video_path, looks_like_video

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file() and (is_video_path(path) or looks_like_video(_head(path))):
            raise InputError(
                f"{text}: a video file, not an image; use 'affectfpn video {shlex.quote(text)}'"
            )
        if path.exists():
            continue
        if has_glob_chars(text):
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
        return {".json": "json", ".txt": "table", ".parquet": "parquet"}.get(suffix, "csv")
    return "table" if sys.stdout.isatty() else "csv"


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[TextIO]:
    """stdout, or a file written through a temporary file that replaces ``path`` on success
    (so a failed run leaves no half-written table behind)."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    from affectfpn.io import atomic_open

    with atomic_open(Path(path).expanduser(), "w", newline="", encoding="utf-8") as handle:
        yield handle


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


# ------------------------------------------------------------------------------------ words
#: The library's Python parameters and the flags that set them. An error about a parameter
#: (``AffectFPNError.option``) or a fix that sets one (``AffectFPNError.hints``) names the flag
#: on the command line; the library's own messages name the parameter.
CLI_FLAGS: dict[str, str] = {
    "faces": "--faces",
    "detector": "--detector",
    "batch_size": "--batch-size",
    "au_threshold": "--au-threshold",
    "min_face": "--min-face",
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
    "recursive": "-r (--recursive)",
    "on_error": "--on-error",
    "resume": "--resume",
    "evals": "--eval",
    "model": "--model",
    "python_executable": "--python",
}
#: What the command line says instead of a fix that sets a parameter it has no flag for. A hint
#: about a parameter in neither table is left out of the command line's message.
CLI_FIXES: dict[str, str] = {
    "token": "set HF_TOKEN",
    "cascade_path": "use the YuNet detector (--detector yunet)",
    "model_path": "pass --detector FILE, or --detector yunet for the embedded one",
    "max_pixels": "if you trust the file, downscale it first",
}


def _cli_value(value: object) -> str:
    """A value as typed after a flag: ``x`` for ``'x'``, ``0.5`` for ``0.5``."""
    return os.fspath(value) if isinstance(value, str | os.PathLike) else str(value)


def _cli_setting(option: str, value: object) -> str:
    """``--flag value`` (or the flag alone, without a value); ``option=value`` without a flag."""
    flag = CLI_FLAGS.get(option)
    if flag is None:
        return option if value is UNSET else f"{option}={value!r}"
    return flag if value is UNSET else f"{flag} {_cli_value(value)}"


def _cli_hint(hint: Hint) -> str | None:
    """A hint in the command line's words, or ``None`` when it has no flag for its parameter."""
    flag = CLI_FLAGS.get(hint.option)
    if flag is None:
        return CLI_FIXES.get(hint.option)
    setting = (
        flag if hint.value is UNSET or hint.value is True else f"{flag} {_cli_value(hint.value)}"
    )
    return f"pass {setting} {hint.text}".rstrip()


def cli_message(error: BaseException) -> str:
    """The message of ``error`` in the command line's words: the flags, not the parameters.

    An :class:`~affectfpn.errors.AffectFPNError` whose ``option`` has a flag names the flag
    (``--batch-size must be ...``, ``--faces x is not valid ...``), and its ``hints`` are worded
    with :data:`CLI_FLAGS` / :data:`CLI_FIXES`; any other error is ``str(error)``.
    """
    if not isinstance(error, AffectFPNError):
        return str(error)
    if error.option is None and not error.hints and not error.params:
        return str(error)
    message = error.detail
    if error.params:
        message = message.format(**{k: _cli_setting(k, v) for k, v in error.params.items()})
    if error.option is not None:
        subject = _cli_setting(error.option, error.value)
        message = f"{subject} {message}" if message else subject
    hints = [text for text in map(_cli_hint, error.hints) if text is not None]
    if hints:
        message = f"{message}; " + ", or ".join(hints)
    return message


def predictor_from_args(args: argparse.Namespace, model: Any, **options: Any) -> Any:
    """The Predictor that the shared face options (``--faces``, ``--detector``, ``--min-face``,
    ``--batch-size``, ``--au-threshold``) ask for; ``options`` are the command's own."""
    from affectfpn.inference import predictor

    detector: Any = args.detector
    if args.faces == "detect" and args.min_face is not None:
        from affectfpn.inference.detectors import get_detector

        detector = get_detector(detector, min_face=args.min_face or None)  # 0: full size
    return predictor.Predictor(
        model,
        faces=args.faces,
        detector=detector,
        batch_size=args.batch_size,
        au_threshold=args.au_threshold,
        **options,
    )


def report_failures(
    failures: Sequence[tuple[str, str]],
    done: int,
    side: Path | None,
    *,
    what: str = "input(s)",
    rest: str = "are in the results",
) -> int:
    """List the inputs a batch run skipped (in the side table ``side``, columns source and
    error, written whole; else on stderr), say how many in one line, and return
    :data:`EXIT_PARTIAL` so that the exit status says something failed."""
    import csv

    listed = "below"
    if side is not None:
        from affectfpn.io import atomic_write

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["source", "error"])
                writer.writerows(failures)

        side.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(side, write)
        listed = f"in {side}"
    else:
        for source, message in failures:
            sys.stderr.write(f"  failed: {source}: {message}\n")
    total = done + len(failures)
    sys.stderr.write(
        f"affectfpn: {len(failures)} of {total} {what} could not be read and were skipped "
        f"(listed {listed}); the other {done} {rest}\n"
    )
    return EXIT_PARTIAL
