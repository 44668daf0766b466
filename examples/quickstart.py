"""Quickstart: load a model, predict every face in a photo, print what the model sees.

Run it from the repository root::

    python examples/quickstart.py
    python examples/quickstart.py --image my_photo.jpg --model user/affect-model

The heart of it is three lines::

    model = AffectFPN.from_pretrained()     # the default model, embedded in the package
    result = model.predict("photo.jpg")     # find, align and predict every face
    print(result.faces[0].expression)

Defaults: the embedded default model and ``data/samples/single_face.jpg`` from the shared data
folder (``$AFFECTFPN_SHARED``, else ``../shared`` next to the repository).
"""

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from affectfpn import AffectFPN, FacePrediction

SHARED = Path(os.environ.get("AFFECTFPN_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def describe(face: FacePrediction) -> str:
    """One line per face; a task the model does not predict is left out."""
    parts = [f"face {face.face_id}"]
    if face.expression is not None:
        parts.append(f"{face.expression.label} ({face.expression.score:.2f})")
    if face.va is not None:
        parts.append(f"valence {face.va.valence:+.2f} arousal {face.va.arousal:+.2f}")
    if face.aus is not None:
        parts.append("active AUs: " + (" ".join(face.aus.active) or "none"))
    return "  ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered name, model folder or Hub repo id (default: the embedded default model)",
    )
    parser.add_argument(
        "--image",
        default=str(SHARED / "data" / "samples" / "single_face.jpg"),
        help="a photo (default: the shared single_face.jpg)",
    )
    parser.add_argument(
        "--detector",
        default="auto",
        help="auto, yunet, haar, or the path of a YuNet .onnx file (default: auto)",
    )
    args = parser.parse_args(argv)

    model = AffectFPN.from_pretrained(args.model)
    result = model.predict(args.image, detector=args.detector)

    print(f"{result.source}: {len(result.faces)} face(s), image {result.width}x{result.height}")
    for face in result.faces:
        print(describe(face))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
