"""YuNet alone: shrunk by the smallest face to find (``min_face``) against full size.

Run from the repository root::

    python benchmarks/detector.py [--threads 2] [--frames 200] [--rounds 5] [--min-face 32]

Reads the first ``--frames`` frames of ``--video`` (default: the sample
``WolfgangLanger_Pexels.mp4``, 640 x 360) and runs ``YuNetDetector.detect`` on each, alternating
in rounds between ``YuNetDetector(min_face=M)`` and ``YuNetDetector(min_face=None)`` (only
``max_side`` limits the size). Prints ms per frame, the ratio, and whether both found the same
number of faces in every frame. No floor.
"""

import time
from pathlib import Path

import cv2
from _common import SHARED, compare, finish, make_parser, print_table, setup

from affectfpn.inference.detectors import YuNetDetector


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--video", type=Path, default=SHARED / "data" / "samples" / "WolfgangLanger_Pexels.mp4"
    )
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-face", type=float, default=32.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.rounds = 10, 1
    setup(args)
    capture = cv2.VideoCapture(str(args.video))
    frames = []
    while len(frames) < args.frames:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise SystemExit(f"no frames in {args.video}; pass --video")
    height, width = frames[0].shape[:2]
    shrunk = YuNetDetector(min_face=args.min_face)
    full = YuNetDetector(min_face=None)
    factor = shrunk.scale_for(width, height)
    print(f"video:    {args.video} ({width} x {height}), {len(frames)} frames")
    print(f"detector: min_face={args.min_face}: network input x{factor:.3f}; full size x1")
    same = [len(shrunk.detect(f)) == len(full.detect(f)) for f in frames]
    print(f"check:    same number of faces in {sum(same)} of {len(frames)} frames")

    def run(detector: YuNetDetector) -> int:
        for frame in frames:
            detector.detect(frame)
        return len(frames)

    print(f"\ntiming ({args.rounds} rounds, order rotated each round):")
    start = time.perf_counter()
    timings = compare(
        {f"min_face={args.min_face:g}": lambda: run(shrunk), "full size": lambda: run(full)},
        rounds=args.rounds,
        min_seconds=0.0,
    )
    seconds = time.perf_counter() - start
    print(f"\nframes/s (median of rounds), {args.threads} thread(s), {seconds:.1f} s:")
    print_table(timings, baseline="full size", unit="frames/s")
    for name, timing in timings.items():
        print(f"  {name:14s} {1000 / timing.median:.2f} ms per frame")
    finish()


if __name__ == "__main__":
    main()
