"""The README's first two commands are what CI runs, verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_install_and_test_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    install, tests = commands
    assert install.startswith("pip install torch==2.14.1 torchvision==0.29.1 -e")
    assert "affectfpn predict" in install
    assert "pytest" in tests


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in _readme_commands():
        assert command in ci, f".ci/run does not run the README command: {command}"


def test_readme_command_1_reads_a_photo_inside_the_repository() -> None:
    """A user's clone has no ../shared: the first command's photo must ship with the repo, with
    its licence note beside it."""
    install = _readme_commands()[0]
    photo = install.split("affectfpn predict", 1)[1].split()[0]
    assert not photo.startswith(".."), photo
    path = ROOT / photo
    assert path.is_file()
    assert path.stat().st_size > 10_000
    assert "MIT" in (path.parent / "LICENSE.md").read_text(encoding="utf-8")
