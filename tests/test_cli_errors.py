"""Errors say which parameter is at fault (``AffectFPNError.option``, ``Hint``): the library's
messages name the Python parameter, the command line's name its flag, from one table
(``affectfpn.cli._common.CLI_FLAGS``) and without rewriting message text."""

import ast
import logging
import re
from pathlib import Path

import pytest

from affectfpn.cli._common import CLI_FIXES, CLI_FLAGS, _LevelFormatter, cli_message
from affectfpn.errors import UNSET, ConfigError, Hint, InputError
from affectfpn.inference.detectors import get_detector
from affectfpn.video.reader import VideoReader

PACKAGE = Path(__file__).resolve().parents[1] / "affectfpn"
# A command-line flag in running text: "--batch-size", not "x--y" nor a bare "--".
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _error_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants of raise statements, ``...Error(...)`` calls and ``Hint(...)`` calls."""
    found: dict[int, ast.Constant] = {}
    for node in ast.walk(tree):
        roots: list[ast.AST] = []
        if isinstance(node, ast.Raise) and node.exc is not None:
            roots.append(node.exc)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name.endswith("Error") or name == "Hint":
                roots.append(node)
        for root in roots:
            for sub in ast.walk(root):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found[id(sub)] = sub
    return sorted(found.values(), key=lambda c: (c.lineno, c.col_offset))


def test_no_library_message_names_a_command_line_flag() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        for const in _error_strings(ast.parse(path.read_text(encoding="utf-8"))):
            text = const.value
            if "pip install" in text:  # pip's own flags are fine
                continue
            if FLAG.search(text):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{const.lineno}: {text!r}")
    assert not wrong, "library messages naming CLI flags:\n" + "\n".join(wrong)


def test_the_scan_finds_a_flag_in_an_error() -> None:
    """The scan above is not vacuous: it sees flags in raises, error calls and hints."""
    source = (
        "def f():\n"
        "    raise ValueError('use --batch-size 4')\n"
        "def g():\n"
        "    return InputError('x', hint=Hint('y', 1, 'or --faces crop'))\n"
    )
    found = [c.value for c in _error_strings(ast.parse(source)) if FLAG.search(c.value)]
    assert found == ["use --batch-size 4", "or --faces crop"]


def test_every_flag_of_the_table_exists_on_the_command_line() -> None:
    from affectfpn.cli.app import build_parser

    parser = build_parser()
    flags: set[str] = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            flags.update(action.option_strings)
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                parsers += list(choices.values())
    for option, flag in CLI_FLAGS.items():
        for name in re.findall(r"--?[a-z][a-z0-9-]*", flag):
            assert name in flags, f"{option}: {name} is no flag of any command"
    for fix in CLI_FIXES.values():
        for name in FLAG.findall(fix):
            assert name in flags, f"{fix}: {name} is no flag of any command"


@pytest.mark.parametrize(
    ("raise_it", "option", "library", "cli"),
    [
        (
            lambda: VideoReader("missing.mp4", every_n=0),
            "every_n",
            "every_n must be an integer >= 1, got 0",
            "--every-n must be an integer >= 1, got 0",
        ),
        (
            lambda: VideoReader("missing.mp4", start=5, end=2),
            "end",
            "end=2 must be greater than start=5",
            "--end 2 must be greater than --start 5",
        ),
        (
            lambda: get_detector("yunet", min_face=-1),
            "min_face",
            "min_face must be a positive number of pixels or None, got -1",
            "--min-face must be a positive number of pixels or None, got -1",
        ),
    ],
)
def test_library_raise_sites_name_their_parameter(
    raise_it: object, option: str, library: str, cli: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        raise_it()  # type: ignore[operator]
    error = caught.value
    assert error.option == option
    assert str(error) == library
    assert cli_message(error) == cli


def test_a_hint_names_the_flag_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from affectfpn import AffectFPN, AffectFPNConfig
    from affectfpn.cli import EXIT_ERROR, main

    torch.manual_seed(0)
    config = AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64))
    model_dir = AffectFPN(config).save_pretrained(tmp_path / "tiny")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code = main(["predict", str(tmp_path / "empty"), "--model", str(model_dir)])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "pass -r (--recursive) to search sub-folders" in lines[0]
    assert "recursive=True" not in err


def test_warnings_word_their_error_for_the_command_line() -> None:
    error = InputError("b.png: unreadable", hint=Hint("max_pixels", UNSET, "with a larger limit"))
    record = logging.LogRecord(
        "affectfpn.inference.predictor", logging.WARNING, __file__, 1, "skipped %s: %s",
        ("b.png", error), None,
    )  # fmt: skip
    line = _LevelFormatter(with_names=False).format(record)
    assert line.endswith(
        "skipped b.png: b.png: unreadable; if you trust the file, downscale it first"
    )
    assert record.getMessage().endswith("pass max_pixels= with a larger limit")  # unchanged
