"""Benchmark prediction on photos with face detection: images/s and time per stage.

Run from the repository root::

    python benchmarks/photos.py [--threads 2] [--repeat 8] [--rounds 3] [--model NAME]
                                [--detector PATH]

Takes every image in ``--photos`` (default ``$AFFECTFPN_SHARED/data/samples``: portraits,
group photos, a large greyscale photo, an RGBA PNG, an image without faces), repeats the list
``--repeat`` times to get a stable figure, and runs ``Predictor.predict`` (``faces="detect"``)
on it in two ways, alternating in rounds:

* ``sequential``: no loader threads, so the stages do not overlap and add up to the total; the
  time is broken down into decode (``load_image``: reading, decoding, conversion to RGB; a
  large JPEG is decoded at the fraction of its size YuNet would shrink it to anyway), detect
  (the detector's ``detect``, including what is left of its downscaling), align (the 5-point
  warp of each face to the model's input size), model (the forward pass) and the rest (batching,
  normalisation, results);
* ``pipelined``: the Predictor's default loader threads, which decode, detect and align the next
  images while the model runs.

The detector is YuNet from ``--detector`` (default
``$AFFECTFPN_SHARED/models/yunet/face_detection_yunet.onnx``; ``auto``, ``yunet`` and ``haar``
also work). OpenCV gets ``--threads`` threads, like torch. ``--model`` as for
``predict_files.py``: the registered default model, else the FER2013 recipe's architecture with
random weights (the output says which). No floor: the figures show where the time goes.
"""

import statistics
import time
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_YUNET,
    SHARED,
    compare,
    finish,
    load_bench_model,
    make_parser,
    paired_ratio,
    print_table,
    setup,
    usable_cores,
)
from torch import nn

import affectfpn.inference.predictor as predictor_module
from affectfpn.inference import Predictor, get_detector
from affectfpn.inference.detectors import YuNetDetector
from affectfpn.io import list_images, load_image

STAGES = ("decode", "detect", "align", "model")


class StageClock:
    """Adds up the time spent in each stage while ``enabled`` (only in the sequential run)."""

    def __init__(self) -> None:
        self.enabled = False
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._model_start = 0.0

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def wrap(self, stage: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return timed

    def hook_model(self, model: nn.Module) -> None:
        def before(*_: object) -> None:
            self._model_start = time.perf_counter()

        def after(*_: object) -> None:
            if self.enabled:
                self.seconds["model"] += time.perf_counter() - self._model_start

        model.register_forward_pre_hook(before)
        model.register_forward_hook(after)


class TimedDetector:
    """A detector wrapper whose ``detect`` is timed by a :class:`StageClock`.

    It forwards ``scale_for`` too, so that the Predictor decodes large JPEGs reduced for it as
    it does for the YuNet detector itself.
    """

    def __init__(self, inner: Any, clock: StageClock) -> None:
        self.inner = inner
        self.detect = clock.wrap("detect", inner.detect)
        if hasattr(inner, "scale_for"):
            self.scale_for = inner.scale_for


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name, folder or Hub repo id; 'fer', 'paper'")
    parser.add_argument(
        "--photos", type=Path, default=SHARED / "data" / "samples", help="folder of photos"
    )
    parser.add_argument(
        "--detector",
        default=str(DEFAULT_YUNET),
        help="YuNet .onnx path (default: the shared copy), or auto / yunet / haar",
    )
    parser.add_argument("--repeat", type=int, default=8, help="times the photo list is repeated")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.rounds = 1, 1
    if not args.photos.is_dir():
        parser.error(f"no folder {args.photos}; pass --photos (or set AFFECTFPN_SHARED)")
    if args.detector.endswith(".onnx") and not Path(args.detector).is_file():
        parser.error(f"no YuNet model at {args.detector}; pass --detector")
    setup(args)

    model, description = load_bench_model(args.model)
    photos = list_images(args.photos)
    inputs = [str(p) for p in photos] * args.repeat
    detector = get_detector(args.detector)
    clock = StageClock()
    clock.hook_model(model)
    # The Predictor calls these through its module's globals: wrap them there (benchmark only).
    predictor_module.load_image = clock.wrap("decode", predictor_module.load_image)
    predictor_module.warp_face = clock.wrap("align", predictor_module.warp_face)
    sequential = Predictor(
        model,
        detector=TimedDetector(detector, clock),
        batch_size=args.batch_size,
        num_workers=0,
        progress=False,
    )
    pipelined = Predictor(model, detector=detector, batch_size=args.batch_size, progress=False)
    # The same YuNet at full size (min_face=None: only max_side limits it), as before the
    # detector learned to shrink images by the smallest face it must find.
    full_size = None
    if isinstance(detector, YuNetDetector) and detector.min_face is not None:
        full_size = Predictor(
            model,
            detector=YuNetDetector(detector.model_path, max_side=detector.max_side, min_face=None),
            batch_size=args.batch_size,
            progress=False,
        )
    print(f"model:    {description}")
    print(f"detector: {detector!r}")
    print(
        f"setting:  {len(photos)} photos x {args.repeat} = {len(inputs)} images, batch "
        f"{args.batch_size}; pipelined run with {pipelined.encoded_num_workers} loader thread(s); "
        f"{args.rounds} rounds"
    )

    print(f"\nphotos in {args.photos}:")
    first = sequential.predict([str(p) for p in photos])
    assert isinstance(first, list)
    faces_per_pass = sum(len(r.faces) for r in first) * args.repeat
    for path, result in zip(photos, first, strict=True):
        image = load_image(path)
        print(f"  {path.name:32s} {image.width:5d}x{image.height:<5d} {len(result.faces)} face(s)")

    per_round: list[dict[str, float]] = []

    def run_sequential() -> int:
        clock.reset()
        clock.enabled = True
        start = time.perf_counter()
        try:
            results = sequential.predict(inputs)
        finally:
            clock.enabled = False
        total = time.perf_counter() - start
        assert isinstance(results, list)
        per_round.append({**clock.seconds, "total": total})
        return len(results)

    def run_pipelined() -> int:
        results = pipelined.predict(inputs)
        assert isinstance(results, list)
        return len(results)

    candidates = {"sequential": run_sequential, "pipelined": run_pipelined}
    if full_size is not None:
        again = full_size.predict([str(p) for p in photos])
        assert isinstance(again, list)
        counts = [len(r.faces) for r in first], [len(r.faces) for r in again]
        print(f"\nfaces per photo, min_face={detector.min_face} vs full size:")
        print(f"  {counts[0]} vs {counts[1]}")

        def run_full_size() -> int:
            results = full_size.predict(inputs)
            assert isinstance(results, list)
            return len(results)

        candidates["pipelined, full-size detection"] = run_full_size

    print(f"\ntiming ({args.rounds} rounds, order rotated each round):")
    timings = compare(candidates, rounds=args.rounds, min_seconds=0.0)
    print(
        f"\nthroughput (median of rounds), {args.threads} thread(s), {faces_per_pass} faces "
        "per pass:"
    )
    print_table(timings, baseline="sequential")

    # The warm-up call of compare() is the first entry: leave it out.
    measured = per_round[1:] or per_round
    median = {k: statistics.median(r[k] for r in measured) for k in (*STAGES, "total")}
    median["other"] = median["total"] - sum(median[s] for s in STAGES)
    n = len(inputs)
    print(f"\nsequential run, median of {len(measured)} round(s), {n} images:")
    print(f"  {'stage':10s} {'ms/image':>9s} {'share':>7s} {'images/s':>9s}")
    for stage in (*STAGES, "other", "total"):
        seconds = median[stage]
        rate = n / seconds if seconds > 0 else float("inf")
        print(
            f"  {stage:10s} {1000 * seconds / n:9.2f} {100 * seconds / median['total']:6.1f}% "
            f"{rate:9.1f}"
        )
    print(
        f"  (model: {1000 * median['model'] / max(faces_per_pass, 1):.2f} ms per face; "
        f"align: {1000 * median['align'] / max(faces_per_pass, 1):.2f} ms per face)"
    )
    print(
        f"\npipelined: {timings['pipelined'].median:.1f} images/s, "
        f"{paired_ratio(timings, 'pipelined', 'sequential'):.2f}x the sequential run "
        f"({pipelined.encoded_num_workers} loader thread(s) beside {args.threads} torch "
        f"thread(s) on {usable_cores()} usable core(s))"
    )
    finish()


if __name__ == "__main__":
    main()
