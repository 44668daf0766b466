"""Crop mode against the ``fer`` package on the same face image files: speed and accuracy.

Run from the repository root, in an environment that has both affectfpn and ``fer`` (``fer``
is no dependency of affectfpn: install it for this benchmark only, e.g. in its own venv)::

    python -m venv .fervenv
    .fervenv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e . fer tensorflow-cpu
    .fervenv/bin/python benchmarks/fer_speed.py [--count 1000] [--rounds 5] [--model NAME ...]

(``fer`` pulls in facenet-pytorch, which pins an old torch: install ``fer`` and
``facenet-pytorch`` with ``--no-deps`` beside the others if pip wants to replace torch; fer 25
imports ``pkg_resources``, so add ``"setuptools<81"``; its constructor builds a Haar cascade with
``cv2.CascadeClassifier``, which OpenCV 5 moved out, so that environment needs
``"opencv-python<5"``.)

``--count`` (1,000) FER2013 test faces (48 x 48), taken evenly across the class folders of
``--data``, are written as JPEG files (RGB, quality 95). Each candidate reads every file from
disk and returns one expression per file, alternating in rounds in one process:

* ``fer``: ``FER().detect_emotions(path, face_rectangles=[box])``, one call per file, as its
  README shows for known faces; its defaults (the quantised TFLite mini-XCEPTION, 64 x 64 grey
  input). ``box`` is the file shrunk by fer's own offsets (10 px), so that the crop fer cuts
  after adding them is exactly the whole file, as for affectfpn;
* each ``--model`` (default: every model of the zoo that the package embeds):
  ``predict(model, paths, faces="crop")`` with its defaults (batches of 64): decode, batch,
  the model (BatchNorm folded in), typed results.

Printed: images/s (median of the rounds), the ratio to ``fer`` in the same round, and each
candidate's accuracy on the files (FER2013 folder names; fer's labels map one to one). Floor
(issue #16): the fast model's crop-mode throughput >= 1.0x fer's, with its FER2013 test accuracy
(whole ``test``, from its model card) >= 0.64.

torch uses ``--threads`` (2); TensorFlow Lite is left at what fer gives it (its default
interpreter), since that is what a user of fer gets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import SHARED, compare, finish, make_parser, print_table, setup
from _common import paired_ratio as ratio_of
from _common import verdict as floor_verdict
from PIL import Image

from affectfpn import AffectFPN, predict
from affectfpn.data import expression_from_name
from affectfpn.io import list_images
from affectfpn.labels import EXPRESSIONS
from affectfpn.models.registry import list_models

FLOOR = 1.0
ACCURACY_FLOOR = 0.64
FAST_MODEL = "fer2013-fast-resnet18half"


def expression_label(name: str) -> str | None:
    """affectfpn's name of a FER2013 folder or one of fer's labels (``"angry"`` -> ``"Anger"``)."""
    index = expression_from_name(name)
    return None if index is None else EXPRESSIONS[index]


def pick_faces(root: Path, count: int) -> list[tuple[Path, str]]:
    """``count`` (file, expression) pairs taken evenly from the sorted listing of ``root``."""
    files = [
        p for p in list_images(root, recursive=True) if expression_label(p.parent.name) is not None
    ]
    if not files:
        raise SystemExit(f"no FER2013 class folders under {root}; pass --data")
    step = len(files) / count
    chosen = [files[int(i * step) % len(files)] for i in range(count)]
    return [(p, str(expression_label(p.parent.name))) for p in chosen]


def write_faces(faces: list[tuple[Path, str]], folder: Path) -> list[Path]:
    paths = []
    for i, (source, _) in enumerate(faces):
        with Image.open(source) as image:
            path = folder / f"face_{i:05d}.jpg"
            image.convert("RGB").save(path, quality=95)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model name, folder or Hub repo id")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "fer2013" / "test")
    parser.add_argument("--count", type=int, default=1000, help="number of face files")
    parser.add_argument("--batch-size", type=int, help="faces per batch (default: predict's)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.rounds = 64, 2
    setup(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from fer.fer import FER  # fer 25 (earlier releases also export it as fer.FER)
    except ImportError:
        raise SystemExit(
            "this benchmark needs the fer package (and TensorFlow) beside affectfpn: see the "
            "docstring for an environment of its own"
        ) from None

    names = args.model or [m.name for m in list_models() if m.source == "package"]
    models = {name: AffectFPN.from_pretrained(name).eval() for name in names}
    for name, model in models.items():
        flip = " (mirror averaging: 2 passes)" if model.config.test_time_flip else ""
        c = model.config
        print(f"model:    {name}: {c.backbone}, neck {c.neck}, {c.input_size[0]} px{flip}")
    detector = FER()
    print(f"fer:      FER() defaults (use_tflite={getattr(detector, 'use_tflite', '?')})")

    folder = Path(tempfile.mkdtemp(prefix="affectfpn-fer-"))
    try:
        faces = pick_faces(args.data, args.count)
        paths = write_faces(faces, folder)
        truth = [label for _, label in faces]
        w, h = Image.open(paths[0]).size
        box = (10, 10, w - 20, h - 20)  # fer adds 10 px on each side: the crop is the file
        print(f"data:     {len(paths)} files ({w} x {h}) from {args.data}, written to {folder}")

        def fer_labels() -> list[str]:
            out = []
            for path in paths:
                found = detector.detect_emotions(str(path), face_rectangles=[box])
                scores: dict[str, float] = found[0]["emotions"] if found else {}
                best = max(scores, key=scores.__getitem__) if scores else ""
                out.append(expression_label(best) or best)
            return out

        def ours(model: AffectFPN) -> list[str]:
            options = {} if args.batch_size is None else {"batch_size": args.batch_size}
            results = predict(model, paths, faces="crop", progress=False, **options)
            return [r.faces[0].expression.label for r in results]  # type: ignore[union-attr]

        accuracy: dict[str, float] = {}
        labels: dict[str, Any] = {"fer": fer_labels()}
        labels.update({name: ours(m) for name, m in models.items()})
        for name, predicted in labels.items():
            accuracy[name] = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))

        candidates = {"fer": lambda: len(fer_labels())}
        for name, model in models.items():
            candidates[name] = lambda model=model: len(ours(model))  # type: ignore[misc]
        print(f"\ntiming ({args.rounds} rounds, order rotated each round):")
        timings = compare(candidates, rounds=args.rounds, min_seconds=0.0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\nthroughput (median of rounds), torch {args.threads} thread(s):")
    print_table(timings, baseline="fer")
    print(f"\naccuracy on these {len(truth)} files (FER2013 test):")
    for name, value in accuracy.items():
        print(f"  {name:32s} {value:.3f}")
    if FAST_MODEL in models:
        floor_verdict(
            f"{FAST_MODEL} / fer crop-mode throughput", ratio_of(timings, FAST_MODEL, "fer"), FLOOR
        )
        card = _card_accuracy(FAST_MODEL)
        if card is not None:
            floor_verdict(f"{FAST_MODEL} FER2013 test accuracy (model card)", card, ACCURACY_FLOOR)
    finish()


def _card_accuracy(name: str) -> float | None:
    """The whole-``test`` accuracy that the registry holds for a model, if any."""
    from affectfpn.models.registry import get_model_info

    value = get_model_info(name).metrics.get("fer2013-test", {}).get("accuracy")
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
