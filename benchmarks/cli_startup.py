"""How fast the command line answers: commands that need no model against ``import torch``.

Runs, alternated in rounds, ``affectfpn --help``, ``affectfpn models``, ``affectfpn models
--json``, an argument error, and ``python -c "import torch"``, each as a fresh process, and
prints each command's median wall time and its ratio to the torch import (floor: 0.5). Then it
runs ``affectfpn video`` on the 472-frame sample with a CSV and reports the share of its wall
time that a run stopping after the first frame takes (floor: 25 %).

    python benchmarks/cli_startup.py            # 7 rounds
    python benchmarks/cli_startup.py --quick    # 1 round, a short video
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTFPN_SHARED", ROOT.parent / "shared"))
CLI = [sys.executable, "-m", "affectfpn"]
COMMANDS = {
    "--help": [*CLI, "--help"],
    "models": [*CLI, "models"],
    "models --json": [*CLI, "models", "--json"],
    "argument error": [*CLI, "predict", "--no-such-option"],
    "import torch": [sys.executable, "-c", "import torch"],
}


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def video_start_share(video: Path, end: int | None) -> tuple[float, float]:
    """(seconds of a run that stops after the first frame, seconds of the whole run) of
    ``affectfpn video --csv``: the first is what the command spends before its first frame
    (imports, the model, the detector, opening the video)."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "out.csv"
        base = [*CLI, "video", str(video), "--csv", str(csv), "-q"]
        first = _time([*base, "--end", "1"])
        total = _time(base + (["--end", str(end)] if end is not None else []))
        if not csv.is_file():
            raise SystemExit("affectfpn video wrote no CSV")
        return first, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one round, 48 video frames")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():  # alternated: a slow spell hits all alike
            times[name].append(_time(command))
    torch_time = statistics.median(times["import torch"])
    print(f"{'command':<16} {'median s':>9} {'x import torch':>15}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16} {median:>9.3f} {median / torch_time:>15.3f}")
    worst = max(statistics.median(times[n]) for n in COMMANDS if n != "import torch")
    print(f"floor: the slowest command is {worst / torch_time:.3f}x import torch (<= 0.5)")
    video = SHARED / "data" / "samples" / "WolfgangLanger_Pexels.mp4"
    if video.is_file():
        first, total = video_start_share(video, 48 if args.quick else None)
        print(
            f"video: up to the first frame {first:.2f} s of {total:.2f} s "
            f"({first / total:.1%} of the wall time; floor <= 25 %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
