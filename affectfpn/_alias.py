"""Old ``python -m affectfpn.recipes.<tool>`` entry points as thin aliases of ``affectfpn
<command>``: they start ``python -m affectfpn <command> ...`` in a child process instead of
importing the command line (which sits above the recipes), so no import circle remains."""

import subprocess
import sys
from collections.abc import Sequence


def run_command(command: str, argv: Sequence[str] | None = None) -> int:
    """Run ``affectfpn <command> <argv>`` (default: this process's arguments); its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    return subprocess.call([sys.executable, "-m", "affectfpn", command, *args])
