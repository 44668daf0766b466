"""A video to a per-frame CSV table and a plot of the main face over time.

Run it from the repository root (the plot needs matplotlib: ``pip install 'affectfpn[plot]'``)::

    python examples/video_to_csv.py --video clip.mp4 --output clip.csv --plot clip_timeline.png
    python examples/video_to_csv.py --video clip.mp4 --every-n 1 --smoothing ema --no-plot

The video is decoded frame by frame and streamed through the model, so memory does not grow with
its length. Each face keeps its id (``face_id``, a track id) while it stays in view. The CSV has a
row per (frame, face) -- columns ``frame`` and ``timestamp`` (seconds), then the same columns as
for photos -- and one ``success`` 0 row for a frame without a face.

Defaults: the embedded default model, the shared ``data/samples/WolfgangLanger_Pexels.mp4``
(``$AFFECTFPN_SHARED``, else ``../shared`` next to the repository), every 5th frame,
``video.csv`` and ``video_va.png``.
"""

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from affectfpn import AffectFPN
from affectfpn.video import analyze_video

SHARED = Path(os.environ.get("AFFECTFPN_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered name, model folder or Hub repo id (default: the embedded default model)",
    )
    parser.add_argument(
        "--video",
        default=str(SHARED / "data" / "samples" / "WolfgangLanger_Pexels.mp4"),
        help="a video file (default: the shared WolfgangLanger_Pexels.mp4)",
    )
    parser.add_argument("--output", default="video.csv", help="the CSV file to write")
    parser.add_argument(
        "--plot",
        default="video_timeline.png",
        help="the main face's expressions, active AUs (and valence/arousal) over time",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    parser.add_argument(
        "--every-n", type=int, default=5, help="predict every n-th frame (default: 5)"
    )
    parser.add_argument(
        "--smoothing",
        choices=("ema", "centered"),
        default=None,
        help="smooth each face track over time (default: off)",
    )
    parser.add_argument(
        "--detector",
        default="auto",
        help="auto, yunet, haar, or the path of a YuNet .onnx file (default: auto)",
    )
    args = parser.parse_args(argv)

    model = AffectFPN.from_pretrained(args.model)
    plot = None if args.no_plot else args.plot
    result = analyze_video(
        model,
        args.video,
        csv_path=args.output,
        plot_path=plot,
        every_n=args.every_n,
        smoothing=args.smoothing,
        detector=args.detector,
    )

    with_face = int((result.num_faces > 0).sum())
    print(
        f"{result.info.source}: {len(result)} frame(s) processed "
        f"(every {args.every_n}), {with_face} with a face, tracks {list(result.track_ids)}"
    )
    print(f"table: {args.output}")
    va = result.valence_arousal()  # per frame, the largest face; NaN where there is none
    if with_face and not np.isnan(va).all():
        valence, arousal = np.nanmean(va, axis=0)
        print(f"mean valence {valence:+.3f}, mean arousal {arousal:+.3f}")
    if plot is not None:
        print(f"plot: {plot}" if Path(plot).is_file() else "plot: nothing to draw (no face)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
