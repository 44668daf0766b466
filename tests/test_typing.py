"""The README's example type-checks as a user's project would: from outside the repository,
against the installed package (an editable install included), with one result for one input."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = """
from affectfpn import AffectFPN, ImagePrediction

model = AffectFPN.from_pretrained()
result = model.predict("photo.jpg", detector="yunet", batch_size=8)
for face in result.faces:
    print(face.face_id, face.expression)
many = model.predict(["a.jpg", "b.jpg"], faces="crop")
first: ImagePrediction = many[0]
reveal_type(result)
reveal_type(many)
"""

WRONG = """
from affectfpn import AffectFPN

AffectFPN.from_pretrained().predict("photo.jpg", batch_sise=8)
"""


def test_readme_example_type_checks_and_options_are_checked(tmp_path: Path) -> None:
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    (tmp_path / "user_code.py").write_text(EXAMPLE)
    (tmp_path / "wrong.py").write_text(WRONG)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", "user_code.py", "wrong.py"],
        cwd=tmp_path,  # outside the repository: the package must be found where it is installed
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert "import-not-found" not in out, out
    # one input, one result; a list, a list
    revealed = [line for line in out.splitlines() if "Revealed type" in line]
    assert len(revealed) == 2, out
    assert revealed[0].endswith('"affectfpn.inference.results.ImagePrediction"'), out
    assert revealed[1].endswith('list[affectfpn.inference.results.ImagePrediction]"'), out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert [line for line in errors if line.startswith("user_code.py")] == [], out
    # real keyword parameters: a misspelt option is an error
    assert any(line.startswith("wrong.py") and "batch_sise" in line for line in errors), out
