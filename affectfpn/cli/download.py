"""``affectfpn download``: fetch weights and the face detector ahead of offline use."""

import argparse
import sys
from pathlib import Path

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
    _format_table,
)
from affectfpn.errors import WeightsError


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "download",
        "fetch weights and the face detector for offline use",
        "Download a model's weights (a registered name or a Hub repo id) into the Hugging Face "
        "cache, check them, and print where they are, with the face detector's file. Afterwards "
        "they load with no network (HF_HUB_OFFLINE=1). The YuNet detector ships inside the "
        "package; --hub-detector also fetches the Hub's pinned YuNet (--detector yunet-hub).",
        [
            "affectfpn download",
            "affectfpn download user/affect-model --revision v1.0",
            "affectfpn download --detector-only --hub-detector",
        ],
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="NAME|REPO",
        help="registered model name or Hub repo id (default: the default model)",
    )
    p.add_argument("--revision", help="Hub branch, tag or commit")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--no-detector", action="store_true", help="skip the face detector")
    what.add_argument("--detector-only", action="store_true", help="only the face detector")
    p.add_argument(
        "--hub-detector",
        action="store_true",
        help="also download the Hub's pinned YuNet (default: the embedded one, no download)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from affectfpn.models import AffectFPN, registry
    from affectfpn.models.hub import WEIGHTS_NAME, download, load_folder

    lines: list[tuple[str, str, str]] = []
    if not args.detector_only:
        name = args.model
        if name is None:
            try:
                name = registry.default_model_name()
            except WeightsError:
                raise WeightsError(
                    "no default model is registered in this affectfpn build: name a model "
                    "(affectfpn download NAME|REPO), or pass --detector-only"
                ) from None
        if name in registry.model_names():
            info = registry.get_model_info(name)
            if info.source == "package":
                folder = registry.package_weights_dir(info)
                label = f"{info.name} (embedded, no download needed)"
            else:
                revision = args.revision or info.revision
                folder = download(info.location, revision=revision)
                label = f"{info.name} = {info.location}@{revision}"
        elif Path(name).expanduser().is_dir():
            folder = Path(name).expanduser()
            label = f"{name} (a local folder, no download needed)"
        else:
            folder = download(name, revision=args.revision)
            label = f"{name}@{folder.name}"
        # Load once: a truncated or mismatched download fails now, not when offline.
        load_folder(AffectFPN, folder, source=label)
        lines.append(("model", label, str(folder / WEIGHTS_NAME)))
    if not args.no_detector:
        from affectfpn.inference.detectors import default_yunet, download_yunet

        if args.hub_detector:
            lines.append(("detector", "YuNet (Hub, pinned)", str(download_yunet())))
        else:
            lines.append(("detector", "YuNet (embedded, no download needed)", str(default_yunet())))
    sys.stdout.write(_format_table(("what", "name", "path"), lines, numeric=set()))
    return EXIT_OK
