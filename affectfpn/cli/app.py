"""The command line's entry point: the parser of all the commands and :func:`main`, which runs one
and turns errors into one line and an exit status (see :mod:`affectfpn.cli`)."""

import argparse
import contextlib
import logging
import os
import platform
import sys
import traceback
from collections.abc import Callable, Sequence

from affectfpn._version import __version__
from affectfpn.cli import (
    calibrate,
    corpus,
    crops,
    distill,
    download,
    evaluate,
    export,
    finetune,
    models,
    predict,
    publish,
    soup,
    teachers,
    train,
    video,
)
from affectfpn.cli._common import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    _epilog,
    _HelpFormatter,
    _logging,
    _one_line,
    _os_message,
    _Parser,
    _UsageError,
    cli_message,
    command_adder,
)
from affectfpn.errors import AffectFPNError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``affectfpn`` argument parser, with one subparser per command."""
    parser = _Parser(
        prog=PROG,
        description="Facial affect analysis with feature pyramid networks: the shipped models "
        "read 7 expressions and 4 action units (AU1, AU2, AU12, AU26) per face; valence/arousal "
        "and more units come from fine-tuning on your labels ('affectfpn finetune').",
        epilog=_epilog(
            "affectfpn predict photo.jpg",
            "affectfpn video clip.mp4 --csv clip.csv",
            "affectfpn models",
            "affectfpn finetune my-faces/train my-faces/val --out runs/mine",
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

    command = command_adder(sub)

    predict.add_parser(command)
    corpus.add_parser(command)
    video.add_parser(command)
    evaluate.add_parser(command)
    calibrate.add_parser(command)
    train.add_parser(command)
    finetune.add_parser(command)
    crops.add_parser(command)
    distill.add_parser(command)
    soup.add_parser(command)
    teachers.add_parser(command)
    export.add_parser(command)
    publish.add_parser(command)
    models.add_parser(command)
    download.add_parser(command)
    return parser


# ------------------------------------------------------------------------------------ main
def _error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = args.handler
    # Training and publishing take long: their progress is logged at the info level.
    default_level = (
        logging.INFO if args.command in ("train", "finetune", "publish") else logging.WARNING
    )
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
        _error(cli_message(err))
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
