"""Old ``python -m affectfpn.recipes.<tool>`` entry points as thin aliases of ``affectfpn
<command>``: they run ``python -m affectfpn <command> ...`` instead of importing the command line
(which sits above the recipes), so no import circle remains.

Run as a program (``python -m affectfpn.recipes.recipe ...``, also under ``torchrun -m``), an
alias *becomes* the command (:func:`exec_command`: the same process, so a launcher's signals
and exit status reach it); called from Python (``main(argv)``), it runs the command in a child
process (:func:`run_command`) and returns its exit status.
"""

import os
import subprocess
import sys
from collections.abc import Sequence


def _argv(command: str, argv: Sequence[str] | None) -> list[str]:
    args = list(sys.argv[1:] if argv is None else argv)
    return [sys.executable, "-m", "affectfpn", command, *args]


def run_command(command: str, argv: Sequence[str] | None = None) -> int:
    """Run ``affectfpn <command> <argv>`` (default: this process's arguments); its exit status."""
    return subprocess.call(_argv(command, argv))


def exec_command(command: str, argv: Sequence[str] | None = None) -> int:
    """Replace this process by ``affectfpn <command> <argv>`` where the system can (POSIX).

    Elsewhere (Windows, where ``exec`` starts a new process) it is :func:`run_command`.
    """
    if os.name != "posix":
        return run_command(command, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    args = _argv(command, argv)
    os.execv(args[0], args)
    return 1  # not reached: execv does not return
