"""The warm script runner behind the example and benchmark smoke tests (tests/_warm.py).

It must report what a fresh interpreter would: the script's exit status, its output, its
environment and working directory, and nothing left over from the script before it.
"""

import os
import sys
from pathlib import Path

from _warm import RUNNER

SCRIPT = """
import os, sys
import torch
print("cwd", os.getcwd())
print("var", os.environ.get("WARM_TEST_VAR"))
print("has PATH", "PATH" in os.environ)
print("argv", sys.argv[1:])
print("seen", getattr(torch, "_warm_test_mark", None))
torch._warm_test_mark = "left by an earlier script"
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_a_script_runs_as_its_own_process(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "WARM_TEST_VAR": "one"}
    first = RUNNER.run(script, ["3", "x y"], cwd=tmp_path, env=env, timeout=60)
    assert first.returncode == 3
    assert f"cwd {tmp_path}" in first.stdout
    assert "var one" in first.stdout
    assert "argv ['3', 'x y']" in first.stdout
    assert "to stderr" in first.stderr
    # A second script sees its own environment and none of the first one's changes.
    env.pop("WARM_TEST_VAR")
    env.pop("PATH", None)  # set where the runner started: the script must not see it
    second = RUNNER.run(script, ["0"], cwd=tmp_path, env=env, timeout=60)
    assert second.returncode == 0
    assert "var None" in second.stdout
    assert "has PATH False" in second.stdout
    assert "seen None" in second.stdout


def test_an_uncaught_exception_is_exit_status_1_with_its_traceback(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("raise ValueError('boom from the script')\n", encoding="utf-8")
    done = RUNNER.run(script, cwd=tmp_path, env=dict(os.environ), timeout=60)
    assert done.returncode == 1
    assert "ValueError: boom from the script" in done.stderr


def test_a_script_past_its_timeout_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(60)\n", encoding="utf-8")
    done = RUNNER.run(script, cwd=tmp_path, env=dict(os.environ), timeout=1)
    assert done.returncode != 0
    assert sys.platform == "win32" or done.returncode < 0  # killed by a signal
