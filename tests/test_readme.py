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
