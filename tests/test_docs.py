"""The documentation site builds with ``mkdocs build --strict``, and what it says matches the code.

The build (broken links, missing pages, API references that do not resolve, docstrings that
mkdocstrings cannot parse all fail it) needs the ``docs`` extra and is skipped without it. The
other tests read the Markdown sources only: every command-line option the pages show exists,
every ``from affectfpn... import ...`` in a Python example resolves, the settings tables list
every field of the dataclasses they describe, and the model zoo names every registered model.
"""

import argparse
import dataclasses
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from affectfpn import AffectFPNConfig, list_models
from affectfpn.cli import build_parser
from affectfpn.recipes.augment import BatchAugment
from affectfpn.recipes.teacher_student import PseudoLabelSettings
from affectfpn.recipes.trainer import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def pages() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))}


def code_blocks(language: str) -> list[tuple[str, str]]:
    """``(page, code)`` of every fenced block in ``language``."""
    return [
        (name, match.group(2))
        for name, text in pages().items()
        for match in FENCE.finditer(text)
        if match.group(1) == language
    ]


def test_docs_pages_exist() -> None:
    names = set(pages())
    for needed in (
        "index.md",
        "outputs.md",
        "faces.md",
        "video.md",
        "models.md",
        "training.md",
        "distributed.md",
        "offline.md",
        "hub.md",
        "evaluation.md",
        "faq.md",
        "cli.md",
        "api.md",
    ):
        assert needed in names


def _missing_docs_packages() -> list[str]:
    missing = []
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module)
    return missing


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install 'affectfpn[docs]'")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        problems or proc.stderr.splitlines()[-30:]
    )
    assert (site / "index.html").is_file()
    for page in pages():
        assert (site / page.removesuffix(".md") / "index.html").is_file() or page == "index.md"
    # mkdocstrings rendered the API from the docstrings, and cross-references resolved.
    api = (site / "api-model" / "index.html").read_text(encoding="utf-8")
    assert 'id="affectfpn.models.affectfpn.AffectFPN.from_pretrained"' in api
    outputs = (site / "outputs" / "index.html").read_text(encoding="utf-8")
    assert "api-inference/#affectfpn.inference.results.ValenceArousal" in outputs


def _cli_options() -> dict[str, set[str]]:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if action.__class__.__name__ == "_SubParsersAction"
    )
    global_options = {s for action in parser._actions for s in action.option_strings}

    def flags(sub: argparse.ArgumentParser) -> set[str]:
        # a command group (``affectfpn teachers table ...``): the options of its commands too
        own = {s for action in sub._actions for s in action.option_strings}
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                for nested in action.choices.values():
                    own |= flags(nested)
        return own

    return {name: global_options | flags(sub) for name, sub in subparsers.choices.items()}


def test_documented_commands_and_options_exist() -> None:
    options = _cli_options()
    checked = 0
    for page, text in pages().items():
        commands = re.findall(r"`(affectfpn [^`]+)`", text)
        commands += [
            line for name, code in code_blocks("bash") if name == page for line in code.splitlines()
        ]
        for command in commands:
            command = command.split(" #")[0].strip().rstrip("\\").strip()
            if not command.startswith("affectfpn "):
                continue
            words = shlex.split(command)
            if words[1].startswith("-") or words[1].isupper():
                continue  # `affectfpn --help`, `affectfpn COMMAND --help`
            assert words[1] in options, f"{page}: unknown command in {command!r}"
            for word in words[2:]:
                if word.startswith("--"):
                    flag = word.split("=")[0]
                    assert flag in options[words[1]], f"{page}: {words[1]} has no option {flag}"
                    checked += 1
    assert checked > 20  # the pages do show options


def test_python_examples_import_existing_names() -> None:
    statement = re.compile(r"^\s*from (affectfpn[\w.]*) import ([\w, ]+)$", re.MULTILINE)
    checked = 0
    for page, code in code_blocks("python"):
        for module_name, names in statement.findall(code):
            module = importlib.import_module(module_name)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(module, name), f"{page}: {module_name} has no {name}"
                checked += 1
    assert checked > 20


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


@pytest.mark.parametrize(
    ("page", "cls"),
    [
        ("training.md", TrainSettings),
        ("training.md", BatchAugment),
        ("training.md", PseudoLabelSettings),
        ("models.md", AffectFPNConfig),
    ],
)
def test_settings_tables_list_every_field(page: str, cls: type) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    missing = [name for name in _fields(cls) if f"`{name}`" not in text]
    assert not missing, f"{page} does not document {cls.__name__} fields {missing}"


def test_model_zoo_names_every_registered_model() -> None:
    text = (DOCS / "models.md").read_text(encoding="utf-8")
    assert "<!-- filled from model_info.json -->" in text
    missing = [info.name for info in list_models() if f"`{info.name}`" not in text]
    assert not missing, f"docs/models.md has no row for the registered model(s) {missing}"


def test_documented_paper_parameter_count_is_the_model_s() -> None:
    import re

    from affectfpn import AffectFPN, AffectFPNConfig

    text = (DOCS / "models.md").read_text(encoding="utf-8")
    match = re.search(r"F3R has \*\*([\d,]+) parameters\*\*", text)
    assert match, "docs/models.md should state the paper model's parameter count"
    model = AffectFPN(AffectFPNConfig.paper())
    direct = sum(p.numel() for p in model.parameters())
    assert int(match.group(1).replace(",", "")) == model.num_params() == direct


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_front_page_snippets_run_as_written_against_the_default(
    page: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a new user copies first: every Python block of the front pages runs, unchanged,
    from the repository root, with the embedded default model and the photos in the repository
    (a snippet that reads face.va on a model without valence/arousal would fail here)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "python"]
    assert blocks, f"{page} has no Python example"
    monkeypatch.chdir(ROOT)
    for code in blocks:
        exec(compile(code, page, "exec"), {"__name__": "__snippet__"})
    assert capsys.readouterr().out.strip(), f"the snippets of {page} printed nothing"
