"""``affectfpn predict``: faces in images -> a table (text, CSV or JSON)."""

import argparse
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from affectfpn.cli._common import (
    _FORMATS,
    EXIT_OK,
    Command,
    _check_inputs,
    _format_table,
    _load_model,
    _note,
    _open_output,
    _output_format,
    _quiet_opencv,
    _signed,
    _UsageError,
    logger,
    predictor_from_args,
    report_failures,
)


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "predict",
        "predict affect for every face in images",
        "Predict valence/arousal, expression and action units for every face in images, "
        "folders or glob patterns. Writes an aligned text table when stdout is a terminal, CSV "
        "otherwise (one row per face; an image without faces gets one row with face_id -1 and "
        "success 0).",
        [
            "affectfpn predict photo.jpg",
            "affectfpn predict photos/ 'more/*.png' --format csv --output faces.csv",
            "affectfpn predict group.jpg --format json --annotate annotated/",
            "affectfpn predict photos/ -o faces.parquet",
            "affectfpn predict crops/ --faces crop --model user/affect-model",
        ],
        "model",
        "faces",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument(
        "-f",
        "--format",
        choices=_FORMATS,
        help="csv (all columns), json (one object per image), table (a summary) or parquet "
        "(the csv's columns; needs affectfpn[pandas]); default: table on a terminal, else csv; "
        "with --output, from its suffix (.parquet, .json, .txt, else csv)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the results here, not stdout")
    p.add_argument(
        "--annotate",
        metavar="DIR",
        help="also write each image with boxes, labels and landmarks drawn into DIR",
    )
    p.add_argument("-r", "--recursive", action="store_true", help="search folders recursively")
    p.add_argument(
        "--on-error",
        choices=("skip", "raise"),
        default=None,
        help="an unreadable input: 'skip' it (listed at the end, with FILE.errors.csv beside "
        "--output, exit status 4) or 'raise' (stop at it). Default: skip when the inputs are "
        "a folder, a glob or several files; raise for one file",
    )
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help="the same as --on-error skip",
    )
    p.set_defaults(handler=run)


_TABLE_HEADER = ("source", "face", "score", "valence", "arousal", "expression", "p", "active AUs")


def _table_rows(result: Any) -> list[list[str]]:
    if not result.faces:
        return [[result.source, "-", "-", "-", "-", "(no face)", "-", "-"]]
    rows = []
    for face in result.faces:
        va = face.va
        expression = face.expression
        rows.append(
            [
                result.source,
                str(face.face_id),
                "-" if face.score is None else f"{face.score:.2f}",
                _signed(None if va is None else va.valence),
                _signed(None if va is None else va.arousal),
                "-" if expression is None else expression.label,
                "-" if expression is None else f"{expression.score:.2f}",
                "-" if face.aus is None else (" ".join(face.aus.active) or "none"),
            ]
        )
    return rows


def _annotated(results: Iterator[Any], folder: Path) -> Iterator[Any]:
    """Pass results through, writing each image with its prediction drawn into ``folder``."""
    from PIL import Image

    from affectfpn.inference.draw import draw

    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for result in results:
        source = Path(result.source)
        name = source.name
        if source.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
            name = source.stem + ".png"
        stem, suffix = Path(name).stem, Path(name).suffix
        count = 1
        while name in used:  # the same file name from two folders
            count += 1
            name = f"{stem}-{count}{suffix}"
        used.add(name)
        canvas = draw(result.source, result)
        Image.fromarray(canvas).save(folder / name)
        logger.info("annotated %s -> %s", result.source, folder / name)
        yield result


def run(args: argparse.Namespace) -> int:
    fmt = _output_format(args.format, args.output)
    _check_inputs(args.inputs)
    model = _load_model(args)
    _quiet_opencv(args.verbose)
    predictor = predictor_from_args(
        args,
        model,
        progress=False if args.quiet else None,
        on_error=_on_error(args),
        recursive=args.recursive,
    )
    results: Iterator[Any] = predictor.predict_iter(list(args.inputs))
    # The first result before any output: an input that fails at once leaves stdout empty.
    first = next(results, None)
    results = itertools.chain([] if first is None else [first], results)
    if args.annotate:
        results = _annotated(results, Path(args.annotate).expanduser())
    images = faces = 0

    def counted(items: Iterator[Any]) -> Iterator[Any]:
        nonlocal images, faces
        for item in items:
            images += 1
            faces += len(item.faces)
            yield item

    if fmt == "parquet":
        _write_parquet(counted(results), args.output)
    else:
        _write_text(fmt, counted(results), args.output)
    where = f" -> {args.output}" if args.output else ""
    annotated = f"; annotated images in {args.annotate}" if args.annotate else ""
    logger.info("%d face(s) in %d image(s)%s%s", faces, images, where, annotated)
    if args.output:
        _note(args, f"{faces} face(s) in {images} image(s) written to {args.output}{annotated}")
    if predictor.failures:
        side = None
        if args.output:
            side = Path(args.output).expanduser()
            side = side.with_name(side.name + ".errors.csv")
        return report_failures(predictor.failures, images, side)
    return EXIT_OK


def _on_error(args: argparse.Namespace) -> str:
    """skip for a batch (a folder, a glob or several inputs), raise for one file, unless set."""
    if args.skip_errors:
        return "skip"
    if args.on_error is not None:
        return str(args.on_error)
    inputs = list(args.inputs)
    single = len(inputs) == 1 and Path(inputs[0]).expanduser().is_file()
    return "raise" if single else "skip"


def _write_parquet(results: Iterator[Any], output: str | None) -> None:
    """The table as one Parquet file (needs pandas and pyarrow), written atomically."""
    from affectfpn.errors import require_extra
    from affectfpn.inference.results import to_pandas
    from affectfpn.io import atomic_write

    if output is None:
        raise _UsageError("--format parquet needs --output FILE.parquet", "predict")
    require_extra("pandas", "pandas")
    require_extra("pyarrow", "pandas")
    table = to_pandas(results)
    atomic_write(Path(output).expanduser(), lambda tmp: table.to_parquet(tmp, index=False))


def _write_text(fmt: str, results: Iterator[Any], output: str | None) -> None:
    from affectfpn.inference.results import write_csv

    with _open_output(output) as out:
        if fmt == "csv":
            write_csv(results, out)  # the columns of the model's labels
        elif fmt == "json":
            out.write("[")
            for i, result in enumerate(results):
                out.write(("," if i else "") + "\n  " + json.dumps(result.to_dict()))
            out.write("\n]\n")
        else:
            rows = [row for result in results for row in _table_rows(result)]
            out.write(_format_table(_TABLE_HEADER, rows, numeric={1, 2, 3, 4, 6}))
