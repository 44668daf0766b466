"""A folder of photos to one CSV table: a row per face, OpenFace-style columns.

Run it from the repository root::

    python examples/folder_to_csv.py --input photos/ --output faces.csv
    python examples/folder_to_csv.py --input crops/ --faces crop --output crops.csv

Every image of the folder (sorted; ``--recursive`` for sub-folders) is read, every face found,
aligned and predicted, and the results are written as they come, so a large folder never sits in
memory. An image without a face still gets a row (``face_id`` -1, ``success`` 0); an unreadable
file is skipped with a warning. The columns are described on the "Outputs" page of the docs.

Defaults: the embedded default model, the shared ``data/samples`` folder
(``$AFFECTFPN_SHARED``, else ``../shared`` next to the repository) and ``faces.csv``.
"""

import argparse
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from affectfpn import AffectFPN, ImagePrediction, predict_iter, write_csv

SHARED = Path(os.environ.get("AFFECTFPN_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered name, model folder or Hub repo id (default: the embedded default model)",
    )
    parser.add_argument(
        "--input",
        default=str(SHARED / "data" / "samples"),
        help="a folder of images (default: the shared sample photos)",
    )
    parser.add_argument("--output", default="faces.csv", help="the CSV file to write")
    parser.add_argument(
        "--faces",
        choices=("detect", "crop"),
        default="detect",
        help="detect faces (default), or treat every image as one face crop",
    )
    parser.add_argument(
        "--detector",
        default="auto",
        help="auto, yunet, haar, or the path of a YuNet .onnx file (default: auto)",
    )
    parser.add_argument("--recursive", action="store_true", help="also read sub-folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    model = AffectFPN.from_pretrained(args.model)
    results = predict_iter(
        model,
        args.input,
        faces=args.faces,
        detector=args.detector,
        recursive=args.recursive,
        on_error="skip",  # a broken file is logged and left out, the rest goes on
    )

    images = faces = 0

    def counted(items: Iterator[ImagePrediction]) -> Iterator[ImagePrediction]:
        nonlocal images, faces
        for item in items:
            images += 1
            faces += len(item.faces)
            yield item

    # The results carry the model's label names, which give the columns; tasks= leaves out
    # the columns of tasks the model does not predict.
    rows = write_csv(counted(results), args.output, tasks=model.config.tasks)
    print(f"{images} image(s), {faces} face(s): {rows} row(s) written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
