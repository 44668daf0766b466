"""Run scripts as a user would, each in its own process, without paying the start-up each time.

The smoke tests of ``examples/`` and ``benchmarks/`` run a dozen and a half scripts; every one
of them starts a Python, imports torch, torchvision, OpenCV and NumPy (2-4 s on the test
machines) and only then does its few seconds of work. This module keeps one *warm* interpreter
with those libraries imported and forks it once per script: each script still runs as
``__main__`` in a process of its own, with its own arguments, working directory, environment,
standard output and exit status, and nothing it does reaches the next one.

Only libraries that read no environment variable at import time that a test changes are
imported in advance (huggingface_hub, which reads ``HF_ENDPOINT`` then, and affectfpn itself are
left for each script to import). Where ``os.fork`` does not exist, or with
``AFFECTFPN_TEST_COLD=1``, each script runs in a plain new interpreter instead.

Run as a program, this file is the warm interpreter: it reads one JSON request per line on
standard input and answers one JSON line per request on standard output.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

#: What the warm interpreter imports before the first fork.
PRELOAD = ("numpy", "PIL.Image", "cv2", "torch", "torchvision")


@dataclass(frozen=True)
class Done:
    """How one script ended, like :class:`subprocess.CompletedProcess`."""

    returncode: int
    stdout: str
    stderr: str


def _run_cold(
    script: Path, args: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float
) -> Done:
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Done(proc.returncode, proc.stdout, proc.stderr)


class WarmRunner:
    """A warm interpreter that runs scripts in forked children, one at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        return hasattr(os, "fork") and os.environ.get("AFFECTFPN_TEST_COLD", "") != "1"

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            self._proc = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            assert self._proc.stdout is not None
            ready = self._proc.stdout.readline()
            if ready.strip() != "ready":
                raise RuntimeError(f"the warm interpreter did not start: {ready!r}")
        return self._proc

    def run(
        self,
        script: Path,
        args: Sequence[str | os.PathLike[str]] = (),
        *,
        cwd: Path,
        env: Mapping[str, str],
        timeout: float = 300.0,
    ) -> Done:
        """Run ``script args`` in ``cwd`` with exactly the environment ``env``."""
        argv = [str(a) for a in args]
        if not self.available():
            return _run_cold(script, argv, cwd, env, timeout)
        request = {
            "script": str(script),
            "args": argv,
            "cwd": str(cwd),
            "env": dict(env),
            "timeout": timeout,
        }
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError("the warm interpreter died")
        reply = json.loads(answer)
        return Done(reply["returncode"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None


#: The one runner of the test session (closed when the session's interpreter exits).
RUNNER = WarmRunner()
atexit.register(RUNNER.close)


# ---- the warm interpreter --------------------------------------------------------------------


def _child(request: dict[str, Any], out_path: str, err_path: str) -> None:
    """In the forked child: become the script (never returns)."""
    import runpy
    import traceback

    code = 1
    try:
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - the child's own stdin
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        script = str(Path(request["script"]).resolve())
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [str(Path(script).parent), *extra, *sys.path[1:]]
        sys.argv = [script, *request["args"]]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is None:
                code = 0
            elif isinstance(stop.code, int):
                code = stop.code
            else:
                print(stop.code, file=sys.stderr)
                code = 1
    except BaseException:  # report whatever the script raised, as Python would
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve(requests: TextIO, answers: TextIO) -> None:
    for module in PRELOAD:
        __import__(module)
    answers.write("ready\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        with tempfile.TemporaryDirectory(prefix="affectfpn-warm-") as folder:
            out_path, err_path = f"{folder}/stdout", f"{folder}/stderr"
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, out_path, err_path)
            deadline = time.monotonic() + float(request["timeout"])
            status = None
            while status is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = raw
                elif time.monotonic() > deadline:
                    os.kill(pid, 9)
                    _, status = os.waitpid(pid, 0)
                else:
                    time.sleep(0.02)
            code = os.waitstatus_to_exitcode(status)

            def read(path: str) -> str:
                return Path(path).read_text(encoding="utf-8", errors="replace")

            reply = {"returncode": code, "stdout": read(out_path), "stderr": read(err_path)}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()


if __name__ == "__main__":
    _serve(sys.stdin, sys.stdout)
