"""Turn whatever a user passes to ``predict`` into RGB ``uint8`` images.

Accepted inputs (see :func:`load_image`): file paths, encoded bytes, binary file objects, PIL
images, numpy arrays and torch tensors. :func:`iter_sources` expands directories, glob patterns,
4-D batches and (lazily) any iterable of those into single inputs, each with a source name used
in results and error messages.

Colour rules, applied the same way to every kind of input:

* Grey images are repeated into three channels.
* Alpha is dropped, keeping the stored colour of every pixel that is at least partly visible
  (PNG, WebP and TIFF keep straight, not premultiplied, colour, so those values are the photo's
  own colours; compositing on black or white would tint soft edges). Pixels that are fully
  transparent (alpha 0) become white: their stored colour is undefined and encoders fill it with
  anything (black, a palette colour, leftovers of an edit).
* 16-bit data (``uint16`` arrays, PIL modes ``I;16*``) is scaled from 0..65535 to 0..255. PIL
  mode ``I`` (32-bit integers) is read as 8-bit when every value is within 0..255 (what
  ``convert("I")`` of an 8-bit image gives), else as 16-bit, clipped to 0..65535.
* Floats must lie in [0, 1] and are scaled by 255 (PIL mode ``F`` may also hold 0..255).
* EXIF orientation is applied, so the image is upright as a photo viewer shows it.
* Only the first frame of a multi-frame file (GIF, TIFF) is read.
"""

from __future__ import annotations

import contextlib
import glob
import io
import itertools
import logging
import os
import secrets
import stat
import struct
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from affectfpn.errors import UNSET, Hint, InputError

__all__ = [
    "DECODE_ERRORS",
    "GLOB_CHARS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "VIDEO_EXTENSIONS",
    "LoadedImage",
    "array_to_rgb",
    "atomic_open",
    "atomic_write",
    "has_glob_chars",
    "is_image_path",
    "is_still_image_file",
    "is_video_path",
    "iter_sources",
    "list_images",
    "load_image",
    "looks_like_video",
    "open_formats",
]

logger = logging.getLogger(__name__)

#: File extensions (lower case) read as images wherever a folder is listed: prediction on a
#: folder or glob, the training and evaluation datasets (affectfpn.data) and the blendshape
#: teacher's script, which keeps a copy that a test holds equal. One list, so that
#: ``affectfpn predict DIR`` and ``affectfpn evaluate DIR`` read the same files.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}
)

#: File extensions (lower case) of common video files: an explicit input with one of them is
#: refused with a hint to the video functions instead of a "not an image" error.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
        ".3gp", ".3g2", ".ts", ".mts", ".m2ts", ".ogv", ".vob", ".mxf",
    }
)  # fmt: skip

#: Largest image (width x height, as declared in the file header) that :func:`load_image`
#: decodes; larger ones are refused before any pixel is decoded. Equal to Pillow's default
#: ``Image.MAX_IMAGE_PIXELS`` (about 89.5 megapixels), so Pillow never warns about an image this
#: module accepts. Pillow itself refuses files over twice its own limit at open time, whatever
#: this value says.
MAX_IMAGE_PIXELS: int = 89_478_485

#: Characters that make a path a glob pattern (when no file has that name).
GLOB_CHARS = ("*", "?", "[")
_URL_PREFIXES = ("http://", "https://", "ftp://", "s3://", "gs://")
# What Pillow raises on data it cannot decode (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)
# Pillow formats never decoded: their plugins hand the file to another interpreter (EPS: the
# Ghostscript program runs the file's PostScript; WMF/EMF: Windows replays the metafile's drawing
# calls). An input may come from anyone, and nothing it holds is run.
_REFUSED_FORMATS = frozenset({"EPS", "WMF"})
# Float values this far outside [0, 1] are treated as rounding noise and clipped.
_FLOAT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LoadedImage:
    """One decoded image.

    Attributes:
        rgb: ``H x W x 3`` ``uint8`` C-contiguous array in RGB order.
        source: where the image came from: a path string, or a description such as
            ``"<array 0>"`` or ``"<bytes>"``.
        reduction: 1, or 2, 4 or 8 when :func:`load_image` was allowed to decode a JPEG at a
            fraction of its size (its ``reduce=`` argument): each pixel of ``rgb`` then stands
            for ``reduction x reduction`` pixels of the full image, whose sides are exactly
            ``reduction`` times those of ``rgb``. :meth:`full` decodes the full image.
    """

    rgb: np.ndarray
    source: str
    reduction: int = 1
    _encoded: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        rgb = self.rgb
        if (
            not isinstance(rgb, np.ndarray)
            or rgb.dtype != np.uint8
            or rgb.ndim != 3
            or rgb.shape[2] != 3
            or not rgb.flags.c_contiguous
        ):
            raise InputError(
                f"{self.source}: LoadedImage.rgb must be a C-contiguous H x W x 3 uint8 array; "
                "build it with affectfpn.io.load_image()"
            )

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.rgb.shape[1])

    @property
    def full_size(self) -> tuple[int, int]:
        """``(width, height)`` of the full image: those of ``rgb`` times ``reduction``."""
        return self.width * self.reduction, self.height * self.reduction

    def full(self) -> LoadedImage:
        """The image at full size: ``self`` unless it was decoded reduced."""
        if self.reduction == 1 or self._encoded is None:
            return self
        rgb, _ = _decode_bytes(self._encoded, self.source, None)
        return LoadedImage(rgb=rgb, source=self.source)


def _fail(source: str, message: str, hint: Hint | None = None) -> InputError:
    return InputError(f"{source}: {message}", hint=hint)


def _torch_module() -> Any:
    # A tensor can only exist once torch is imported, so this never imports torch itself.
    return sys.modules.get("torch")


def _is_tensor(obj: object) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(obj, torch.Tensor)


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` has an image file extension (``IMAGE_EXTENSIONS``).

    Only the name is looked at; the file need not exist.
    """
    return Path(os.fspath(path)).suffix.lower() in IMAGE_EXTENSIONS


def has_glob_chars(text: str) -> bool:
    """Whether ``text`` holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(ch in text for ch in GLOB_CHARS)


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` has a common video file extension (``VIDEO_EXTENSIONS``).

    Only the name is looked at; the file need not exist.
    """
    return Path(os.fspath(path)).suffix.lower() in VIDEO_EXTENSIONS


# ISO base media (MP4, MOV, 3GP) brands of video files; HEIF and AVIF images share the container
# and are told apart by their brand.
_VIDEO_BRANDS = frozenset(
    {
        b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"qt  ",
        b"M4V ", b"M4VP", b"mmp4", b"dash", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"MSNV",
        b"f4v ", b"XAVC",
    }
)  # fmt: skip


def looks_like_video(data: bytes) -> bool:
    """Whether the first bytes of a file are those of a common video container."""
    if len(data) >= 12 and data[4:8] == b"ftyp":  # MP4, MOV, 3GP
        return data[8:12] in _VIDEO_BRANDS
    if data[4:8] in (b"moov", b"mdat", b"wide"):  # old QuickTime files
        return True
    if data.startswith(b"RIFF") and data[8:12] == b"AVI ":
        return True
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska, WebM
        return True
    if data.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):  # MPEG program/video
        return True
    if data.startswith(b"FLV\x01"):
        return True
    return data.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")  # ASF (WMV)


def is_still_image_file(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is an existing image file of one frame (not a video).

    The content decides, not the name: a file that Pillow opens as a JPEG, PNG, BMP, WebP, TIFF
    or GIF image with a single frame. Animated GIF, WebP or PNG files and anything Pillow cannot
    open are not still images. Only the header is read.
    """
    try:
        with Image.open(os.path.expanduser(os.fspath(path)), formats=_COMMON_FORMATS) as image:
            return int(getattr(image, "n_frames", 1)) <= 1
    except Exception:  # any reason Pillow cannot open it: not a still image it knows
        return False


def _is_hidden(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def list_images(directory: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """List the image files of a directory, sorted by path.

    Args:
        directory: the folder to list.
        recursive: also list sub-folders.

    Returns:
        Files whose extension is in ``IMAGE_EXTENSIONS`` (case-insensitive). Hidden files and
        folders (name starting with ``.``, e.g. macOS ``._photo.jpg`` resource forks) are skipped.
    """
    return [Path(name) for name in _image_files(directory, recursive)]


def _has_image_suffix(name: str) -> bool:
    """:func:`is_image_path` for a bare file name (no folder part), without building a Path."""
    dot = name.rfind(".")
    return 0 < dot < len(name) - 1 and name[dot:].lower() in IMAGE_EXTENSIONS


def _image_files(directory: str | os.PathLike[str], recursive: bool) -> list[str]:
    """:func:`list_images` as path strings (each ``str()`` of the Path it returns)."""
    root = Path(directory)
    if not recursive:  # one scandir: names and file types without a stat per entry
        with os.scandir(root) as entries:
            names = [
                e.name
                for e in entries
                if not e.name.startswith(".") and _has_image_suffix(e.name) and e.is_file()
            ]
        names.sort()
        # The strings str(root / name) gives, without a Path per file.
        prefix = str(root)
        if prefix == ".":
            return names
        return [os.path.join(prefix, name) for name in names]
    found = [
        p
        for p in root.rglob("*")
        if is_image_path(p) and not _is_hidden(p.relative_to(root).parts) and p.is_file()
    ]
    return [str(p) for p in sorted(found)]


def _default_name(obj: object, index: int | None) -> str:
    suffix = "" if index is None else f" {index}"
    if isinstance(obj, (str, os.PathLike)):
        return str(os.fspath(obj))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"<bytes{suffix}>"
    if isinstance(obj, Image.Image):
        return f"<PIL image{suffix}>"
    if isinstance(obj, np.ndarray):
        return f"<array{suffix}>"
    if _is_tensor(obj):
        return f"<tensor{suffix}>"
    file_name = getattr(obj, "name", None)
    if isinstance(file_name, str):
        return file_name
    return f"<file{suffix}>"


def _is_single_input(obj: object) -> bool:
    return (
        isinstance(obj, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray))
        or _is_tensor(obj)
        or callable(getattr(obj, "read", None))
    )


def iter_sources(inputs: object, *, recursive: bool = False) -> Iterator[tuple[str, object]]:
    """Expand one input or many into ``(source_name, single_input)`` pairs, lazily.

    * a directory yields its image files (sorted; see :func:`list_images`);
    * a string containing ``*``, ``?`` or ``[`` that is not an existing path is a glob pattern
      and yields the matching image files, sorted (``**`` needs ``recursive=True``);
    * a 4-D numpy array (``N x H x W x C``) or 4-D tensor (``N x C x H x W``) yields its N images;
    * a list, tuple, generator or any other iterable yields the expansion of each item, one at a
      time, so a generator of many inputs is never materialised;
    * anything else accepted by :func:`load_image` is yielded as is.

    Path names are the path string; other inputs are named by kind and position in the stream,
    e.g. ``"<array 0>"``, ``"<tensor 3>"``, ``"<bytes 1>"``.

    Args:
        inputs: what the user passed.
        recursive: descend into sub-folders of directories (and allow ``**`` in patterns).

    Raises:
        InputError: for a directory without images, a pattern with no match, or an object that
            is no kind of image input (raised when the iteration reaches it).
    """
    counter = itertools.count()
    yield from _expand(inputs, counter, recursive)


def _expand(
    obj: object, counter: itertools.count[int], recursive: bool
) -> Iterator[tuple[str, object]]:
    if isinstance(obj, (str, os.PathLike)):
        for name, item in _expand_path(obj, recursive):
            next(counter)
            yield name, item
    elif isinstance(obj, np.ndarray) and obj.ndim == 4:
        for i in range(obj.shape[0]):
            yield f"<array {next(counter)}>", obj[i]
    elif _is_tensor(obj) and obj.ndim == 4:  # type: ignore[attr-defined]
        for i in range(obj.shape[0]):  # type: ignore[attr-defined]
            yield f"<tensor {next(counter)}>", obj[i]  # type: ignore[index]
    elif _is_single_input(obj):
        yield _default_name(obj, next(counter)), obj
    elif isinstance(obj, Mapping):
        raise InputError(
            f"<{type(obj).__name__}>: a mapping is not an image input; pass its values "
            "(e.g. list(d.values())) or a list of paths"
        )
    elif isinstance(obj, Iterable):
        for item in obj:
            yield from _expand(item, counter, recursive)
    else:
        raise InputError(
            f"<{type(obj).__name__}>: not an image input; pass a file path, directory, glob "
            "pattern, bytes, PIL image, numpy array, torch tensor, or a list of those"
        )


def _expand_path(obj: str | os.PathLike[Any], recursive: bool) -> Iterator[tuple[str, object]]:
    raw = os.fspath(obj)
    text = os.fsdecode(raw)
    path = Path(text).expanduser()
    if path.is_dir():
        files = _image_files(path, recursive)
        if not files:
            raise InputError(
                f"{text}: the directory holds no image files "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))})",
                hint=None if recursive else Hint("recursive", True, "to search sub-folders"),
            )
        for name in files:
            yield name, name
    elif not path.exists() and has_glob_chars(text):
        pattern = os.path.expanduser(text)
        matches = sorted(
            m
            for m in glob.iglob(pattern, recursive=recursive)
            if is_image_path(m) and os.path.isfile(m)
        )
        if not matches:
            raise InputError(
                f"{text}: the glob pattern matches no image file "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); check the pattern"
            )
        for m in matches:
            yield m, Path(m)
    else:
        # Existence is checked by load_image, so the error names the file when it is read.
        yield text, obj


def load_image(
    src: object,
    *,
    bgr: bool = False,
    name: str | None = None,
    max_pixels: int | None = None,
    reduce: Callable[[int, int], float] | None = None,
) -> LoadedImage:
    """Decode one image input into an RGB ``uint8`` array.

    Args:
        src: a file path (``str`` or ``os.PathLike``), encoded image bytes (``bytes``,
            ``bytearray``, ``memoryview``), a binary file object, a ``PIL.Image.Image``, a numpy
            array (``H x W``, ``H x W x 1``, ``H x W x 3`` RGB or ``H x W x 4`` RGBA; ``uint8``,
            ``uint16``, ``bool``, other integers within 0..255, or floats in [0, 1]) or a torch
            tensor (``C x H x W`` or ``1 x C x H x W`` with C in 1, 3, 4; same dtypes).
        bgr: numpy arrays with 3 or 4 channels are in OpenCV's BGR / BGRA order. Other inputs are
            always RGB.
        name: the source name to report (default: the path, or a description such as
            ``"<array>"``).
        max_pixels: refuse encoded images whose header declares more pixels than this
            (default: the module's ``MAX_IMAGE_PIXELS``, read at call time).
        reduce: for a JPEG file or JPEG bytes: called with the image's ``(width, height)``,
            it returns by how much the caller will shrink the image anyway (e.g. a face
            detector's ``1 / scale_for(width, height)``). The JPEG is then decoded at 1/2, 1/4
            or 1/8 of its size (libjpeg's DCT scaling, which averages and skips most of the
            work), the largest of these that is at most that factor and divides both sides.
            The result's ``reduction`` says which; its :meth:`~LoadedImage.full` decodes the
            full image when the caller needs it after all. Other inputs are never reduced.

    Returns:
        The image and its source name. The array never shares memory with ``src``.

    Raises:
        InputError: missing, empty, truncated, corrupt or oversized files, data that is not an
            image, and arrays/tensors with a wrong shape, dtype or value range. The message names
            the input and the fix.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    source = name if name is not None else _default_name(src, None)

    if isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        if isinstance(src, (str, os.PathLike)):
            data = _read_path(src, source)
        else:
            data = bytes(src)
            if not data:
                raise _fail(source, "the byte string is empty; pass the encoded file's content")
        rgb, reduction = _decode_bytes(data, source, limit, reduce)
        if reduction > 1:
            return LoadedImage(rgb=rgb, source=source, reduction=reduction, _encoded=data)
    elif isinstance(src, Image.Image):
        with _pillow_bomb_warning_ignored():
            rgb = _pil_image_to_rgb(src, source, limit)
    elif isinstance(src, np.ndarray):
        rgb = array_to_rgb(src, bgr=bgr, source=source)
    elif _is_tensor(src):
        rgb = _tensor_to_rgb(src, source)
    elif callable(getattr(src, "read", None)):
        content = src.read()  # type: ignore[attr-defined]
        if not isinstance(content, (bytes, bytearray)):
            raise _fail(source, "the file object returned text; open the file in binary mode 'rb'")
        if not content:
            raise _fail(source, "the file object is empty (or already read to its end)")
        rgb, _ = _decode_bytes(bytes(content), source, limit)
    else:
        raise _fail(
            f"<{type(src).__name__}>" if name is None else source,
            "not an image input; pass a file path, bytes, PIL image, numpy array (H x W x C) "
            "or torch tensor (C x H x W)",
        )
    return LoadedImage(rgb=rgb, source=source)


# --------------------------------------------------------------------------- encoded images


def _read_path(src: str | os.PathLike[Any], source: str) -> bytes:
    text = os.fsdecode(os.fspath(src))
    if text.lower().startswith(_URL_PREFIXES):
        raise _fail(source, "URLs are not downloaded; fetch the file first and pass its path")
    path = os.path.expanduser(text)
    try:  # no stat beforehand: the error says what is wrong
        data = _read_file(path)
    except FileNotFoundError:
        raise _fail(
            source, "no such file; check the path (relative paths start at the cwd)"
        ) from None
    except OSError as exc:
        if os.path.isdir(path):  # Windows says "permission denied" for a directory
            raise _fail(
                source,
                "is a directory, not an image file; pass it to predict() (or iter_sources()) "
                "to read every image in it",
            ) from None
        raise _fail(source, f"cannot read the file ({exc}); check its permissions") from exc
    if not data:
        raise _fail(source, "the file is empty (0 bytes); re-export or re-download it")
    return data


def _read_file(path: str) -> bytes:
    """A file's content: ``open(path, "rb").read()`` in fewer steps.

    One ``read`` of the size ``fstat`` reports, plus one byte to see the end, is enough for a
    regular file; anything else (a file that grows or shrinks meanwhile, a pipe) is read on
    until the end. For small face crops the file object's buffering was a third of the time.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        size = info.st_size
        data = os.read(fd, size + 1)
        if len(data) == size and stat.S_ISREG(info.st_mode):
            return data
        parts = [data]
        while data:
            data = os.read(fd, max(size, 1 << 16))
            parts.append(data)
        return b"".join(parts)
    finally:
        os.close(fd)


#: Tried first, in this order: the formats photos and face crops come in. Pillow tries formats
#: in list order, opening each whose signature matches, so the common ones first save work.
_COMMON_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_formats_cache: tuple[int, list[str]] = (-1, [])


def open_formats() -> list[str]:
    """Every format Pillow can open (plugins registered later included), less the refused."""
    global _formats_cache
    Image.init()  # loads Pillow's plugins once; a no-op afterwards
    if _formats_cache[0] != len(Image.ID):
        usable = [f for f in Image.ID if f not in _REFUSED_FORMATS]
        first = [f for f in _COMMON_FORMATS if f in usable]
        _formats_cache = (len(Image.ID), first + [f for f in usable if f not in first])
    return _formats_cache[1]


def _check_pixels(size: tuple[int, int], source: str, limit: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise _fail(source, f"the image declares a size of {width}x{height} pixels (empty)")
    if limit is not None and width * height > limit:
        raise _fail(
            source,
            f"the image declares {width}x{height} = {width * height:,} pixels, more than the "
            f"limit of {limit:,} (a possible decompression bomb)",
            Hint("max_pixels", UNSET, "with a larger limit if you trust the file, or downscale it"),
        )


#: Start-of-frame markers (SOF0..SOF15 less DHT, JPG and DAC): they carry the image size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _plain_jpeg_header(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a complete 8-bit grey or 3-channel JPEG, else ``None``.

    Only files that start with SOI and end with EOI qualify, so a truncated file never does.
    """
    if not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 10 > end:
                return None
            precision = data[pos + 4]
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            components = data[pos + 9]
            ok = precision == 8 and components in (1, 3) and width > 0 and height > 0
            return (width, height) if ok else None
        if length < 2:
            return None
        pos += 2 + length
    return None


# libjpeg decodes directly at these fractions of the full size (largest reduction first).
_JPEG_REDUCTIONS = (8, 4, 2)


def _decode_plain_jpeg(
    data: bytes,
    source: str,
    limit: int | None,
    reduce: Callable[[int, int], float] | None = None,
) -> tuple[np.ndarray, int] | None:
    """Decode a plain JPEG with OpenCV: ``(rgb, reduction)``; ``None`` sends it to Pillow.

    For small crops Pillow's Python-side parsing costs several times the decoding itself
    (0.17 ms against 0.03 ms for a 48 x 48 face). Both use libjpeg-turbo with the same settings:
    on 763 files (FER2013 faces and photos) the pixels were identical. OpenCV applies the EXIF
    orientation itself. CMYK, 12-bit, truncated or unusual files keep Pillow's path and errors.

    With ``reduce`` (see :func:`load_image`) the JPEG is decoded at 1/2, 1/4 or 1/8 of its
    size; only reductions that divide both sides are used, so that pixel ``j`` of the result
    covers exactly pixels ``r*j .. r*j + r - 1`` of the full image in every EXIF orientation.
    """
    size = _plain_jpeg_header(data)
    if size is None:
        return None
    _check_pixels(size, source, limit)
    import cv2

    width, height = size
    encoded = np.frombuffer(data, dtype=np.uint8)
    reduction = 1
    if reduce is not None:
        allowed = reduce(width, height)
        reduction = next(
            (r for r in _JPEG_REDUCTIONS if r <= allowed and width % r == 0 and height % r == 0),
            1,
        )
    if reduction > 1:
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
            reduction, cv2.IMREAD_REDUCED_COLOR_8
        )
        bgr = cv2.imdecode(encoded, flag)
        sides = (height // reduction, width // reduction)
        if bgr is not None and bgr.shape[:2] in (sides, sides[::-1]) and bgr.ndim == 3:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), reduction
        # not what libjpeg's scaling gives: decode in full instead
    rgb = _imdecode_rgb(cv2, encoded)
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3:
        return None
    return rgb, 1


def _imdecode_rgb(cv2: Any, encoded: np.ndarray) -> np.ndarray | None:
    """Decode in full to RGB: libjpeg writes RGB itself where OpenCV can ask it to (>= 4.11)."""
    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    if flag is not None:
        return cast(np.ndarray | None, cv2.imdecode(encoded, flag))
    bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return None if bgr is None or bgr.ndim != 3 else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# Pillow's own size check warns (DecompressionBombWarning) for images between its limit and twice
# it. This module checks every declared size itself (_check_pixels, against ``max_pixels``) and
# raises a clean InputError, so Pillow's warning would only be printed next to that error (or
# stand in for a limit the caller raised). It is ignored while this module opens and decodes a
# file: one shared filter, installed by the first decoder and removed (by identity, not by
# restoring a saved list, so other threads' filters survive) when the last one is done.
# warnings.catch_warnings() cannot be used: decoding runs in several threads (Predictor's
# loaders), and overlapping catch_warnings() blocks restore each other's saved lists, which can
# leave a filter in place for good.
_BOMB_FILTER: tuple[Any, ...] = ("ignore", None, Image.DecompressionBombWarning, None, 0)
_bomb_filter_lock = threading.Lock()
_bomb_filter_users = 0


def _warning_filters_changed() -> None:
    # Tells the warnings module that its filter list changed (what filterwarnings() does), so
    # that per-module "already warned" registries are rebuilt; absent in some Python versions.
    changed = getattr(warnings, "_filters_mutated", None)
    if callable(changed):
        changed()


@contextlib.contextmanager
def _pillow_bomb_warning_ignored() -> Iterator[None]:
    global _bomb_filter_users
    filters = cast(list[Any], warnings.filters)
    with _bomb_filter_lock:
        if _bomb_filter_users == 0:
            filters.insert(0, _BOMB_FILTER)
            _warning_filters_changed()
        _bomb_filter_users += 1
    try:
        yield
    finally:
        with _bomb_filter_lock:
            _bomb_filter_users -= 1
            if _bomb_filter_users == 0:
                for i, entry in enumerate(filters):
                    if entry is _BOMB_FILTER:
                        del filters[i]
                        break
                _warning_filters_changed()


def _decode_bytes(
    data: bytes,
    source: str,
    limit: int | None,
    reduce: Callable[[int, int], float] | None = None,
) -> tuple[np.ndarray, int]:
    """An encoded image as ``(rgb, reduction)``; only a plain JPEG is ever reduced."""
    decoded = _decode_plain_jpeg(data, source, limit, reduce)
    if decoded is not None:
        return decoded
    with _pillow_bomb_warning_ignored():
        return _open_and_decode(data, source, limit), 1


def _open_and_decode(data: bytes, source: str, limit: int | None) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data), formats=open_formats())
    # The warning is ignored here (see _pillow_bomb_warning_ignored); caught anyway, in case a
    # filter that turns it into an error comes first: Pillow then stops at the header.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _fail(
            source,
            f"refused by Pillow as a possible decompression bomb ({exc}); if you trust the "
            "file, downscale it first",
        ) from exc
    except UnidentifiedImageError as exc:
        if is_video_path(source) or looks_like_video(data[:64]):
            raise _fail(
                source,
                "a video file, not an image; read it with affectfpn.video.predict_video() or "
                "analyze_video() ('affectfpn video' on the command line)",
            ) from None
        raise _fail(
            source,
            "not an image file Pillow can read (unknown or unsupported format); check that it "
            "is a JPEG, PNG, BMP, WebP, TIFF or GIF image",
        ) from exc
    except DECODE_ERRORS as exc:
        raise _fail(source, f"corrupt image header ({exc}); re-export the file") from exc
    with image:
        return _pil_image_to_rgb(image, source, limit)


def _pil_image_to_rgb(image: Image.Image, source: str, limit: int | None) -> np.ndarray:
    if image.format in _REFUSED_FORMATS:
        raise _fail(
            source,
            f"{image.format} files are not read: decoding them runs a program the file holds "
            "(PostScript or drawing calls); convert it to PNG or JPEG with a trusted tool",
        )
    _check_pixels(image.size, source, limit)
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _fail(source, f"refused as a possible decompression bomb ({exc})") from exc
    except DECODE_ERRORS as exc:
        raise _fail(
            source,
            f"the image data is truncated or corrupt ({exc}); re-export or re-download it",
        ) from exc
    try:
        # in place: an image without an orientation tag is not copied
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good image
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", source, exc)
    return _pil_to_rgb(image, source)


def _pil_to_rgb(image: Image.Image, source: str) -> np.ndarray:
    mode = image.mode
    try:
        if mode == "RGB" and "transparency" not in image.info:
            return np.array(image, dtype=np.uint8, order="C")
        if mode.startswith("I;16"):
            return array_to_rgb(_scale_int_image(np.asarray(image)), source=source)
        if mode == "I":
            values = np.asarray(image)
            if values.size and values.min() >= 0 and values.max() <= 255:
                return array_to_rgb(values.astype(np.uint8), source=source)  # 8-bit data
            return array_to_rgb(_scale_int_image(values), source=source)
        if mode == "F":
            values = np.asarray(image, dtype=np.float64)
            if np.isfinite(values).all() and values.size and values.max() > 1.0:
                values = np.clip(values, 0.0, 255.0) / 255.0  # an 8-bit range float image
            return array_to_rgb(values, source=source)
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = np.asarray(image if image.mode == "RGBA" else image.convert("RGBA"))
            return _drop_alpha(rgba)
        return np.array(image.convert("RGB"), dtype=np.uint8, order="C")
    except InputError:
        raise
    except (ValueError, OSError) as exc:
        raise _fail(
            source, f"cannot convert PIL mode {mode!r} to RGB ({exc}); convert it to RGB first"
        ) from exc


def _scale_int_image(values: np.ndarray) -> np.ndarray:
    """16-bit data in an integer array (PIL modes I;16* and I) to uint8."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _drop_alpha(rgba: np.ndarray) -> np.ndarray:
    import cv2

    # cvtColor copies the colour channels several times faster than numpy's strided copy.
    rgb = cv2.cvtColor(np.ascontiguousarray(rgba, dtype=np.uint8), cv2.COLOR_RGBA2RGB)
    transparent = rgba[..., 3] == 0
    if transparent.any():
        rgb[transparent] = 255
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------- arrays, tensors


def _to_uint8(values: np.ndarray, source: str) -> np.ndarray:
    kind = values.dtype.kind
    if values.dtype == np.uint8:
        return values
    if kind == "b":
        return values.astype(np.uint8) * np.uint8(255)
    if values.dtype == np.uint16:
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if kind == "f":
        if not np.isfinite(values).all():
            raise _fail(source, "the float image holds NaN or infinite values; clean it first")
        low, high = float(values.min()), float(values.max())
        if low < -_FLOAT_TOLERANCE or high > 1.0 + _FLOAT_TOLERANCE:
            hint = (
                "divide by 255"
                if low >= 0 and high <= 255
                else "rescale it, e.g. (x - min) / (max - min), or undo the normalisation"
            )
            raise _fail(
                source,
                f"float images must hold values in [0, 1], found [{low:.4g}, {high:.4g}]; "
                f"{hint}, or pass a uint8 array",
            )
        return np.rint(np.clip(values.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if kind in "iu":
        low_i, high_i = int(values.min()), int(values.max())
        if low_i < 0 or high_i > 255:
            raise _fail(
                source,
                f"{values.dtype} image values span [{low_i}, {high_i}]; integer images other "
                "than uint16 must lie in 0..255 (convert 16-bit data to uint16 first)",
            )
        return values.astype(np.uint8)
    raise _fail(
        source,
        f"unsupported dtype {values.dtype}; pass uint8, uint16, bool or float values in [0, 1]",
    )


def array_to_rgb(values: np.ndarray, *, bgr: bool = False, source: str = "<array>") -> np.ndarray:
    """Convert an image array to a new ``H x W x 3`` ``uint8`` RGB array.

    Args:
        values: ``H x W``, ``H x W x 1``, ``H x W x 3`` or ``H x W x 4`` array (dtypes as in
            :func:`load_image`).
        bgr: 3/4-channel input is BGR / BGRA (OpenCV order).
        source: name used in error messages.

    Raises:
        InputError: wrong number of dimensions or channels, zero size, bad dtype or range.
    """
    if not isinstance(values, np.ndarray):
        raise _fail(source, f"expected a numpy array, got {type(values).__name__}")
    shape = values.shape
    if values.ndim == 4:
        raise _fail(
            source,
            f"a 4-D array {shape} is a batch; pass it to predict() (or iter_sources()), or "
            "index one image",
        )
    if values.ndim == 3 and shape[2] not in (1, 3, 4):
        hint = (
            "; it looks channels-first, use arr.transpose(1, 2, 0)" if shape[0] in (1, 3, 4) else ""
        )
        raise _fail(source, f"image arrays are H x W x C with C in 1, 3, 4, got {shape}{hint}")
    if values.ndim not in (2, 3):
        raise _fail(source, f"image arrays are H x W or H x W x C, got shape {shape}")
    if values.size == 0:
        raise _fail(source, f"the image is empty (shape {shape})")
    pixels = _to_uint8(values, source)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels == 1:
        rgb = np.repeat(pixels, 3, axis=2)
    elif channels == 3:
        rgb = pixels[:, :, ::-1] if bgr else pixels
    else:
        rgba = pixels[:, :, [2, 1, 0, 3]] if bgr else pixels
        return _drop_alpha(rgba)
    out = np.array(rgb, dtype=np.uint8, order="C", copy=True)
    return out


def _tensor_to_rgb(tensor: Any, source: str) -> np.ndarray:
    torch = _torch_module()
    shape = tuple(tensor.shape)
    if tensor.ndim == 4:
        if shape[0] != 1:
            raise _fail(
                source,
                f"a tensor of shape {shape} is a batch of {shape[0]} images; pass it to "
                "predict() (or iter_sources()), or index one image",
            )
        tensor = tensor[0]
    if tensor.ndim == 3:
        if tensor.shape[0] not in (1, 3, 4):
            hint = (
                "; it looks channels-last, use t.permute(2, 0, 1)"
                if tensor.shape[-1] in (1, 3, 4)
                else ""
            )
            raise _fail(source, f"image tensors are C x H x W with C in 1, 3, 4, got {shape}{hint}")
    elif tensor.ndim != 2:
        raise _fail(source, f"image tensors are C x H x W or 1 x C x H x W, got shape {shape}")
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()  # float16 / bfloat16 have no (or an inexact) numpy twin
    if tensor.is_complex():
        raise _fail(source, f"unsupported dtype {tensor.dtype}; pass uint8 or float in [0, 1]")
    values = tensor.cpu().numpy()
    if values.ndim == 3:
        values = values.transpose(1, 2, 0)
    return array_to_rgb(values, source=source)


# --------------------------------------------------------------------------------------------
# writing files whole
# --------------------------------------------------------------------------------------------


def _temp_beside(path: Path) -> Path:
    """A new, empty, uniquely named file ``.<stem>.<random>.tmp<suffix>`` next to ``path``.

    The suffix stays last, for writers that pick a format by it.
    Its mode is ``0666`` less the umask, as for any file the user writes (``mkstemp`` gives
    ``0600``), so the file that replaces ``path`` reads like the user's other files.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: cannot create a unique temporary file for {path.name}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike[str], durable: bool) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it when the block ends without an error."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(out)
    usual = stat.S_IMODE(tmp.stat().st_mode)  # 0666 less the umask in force now
    try:
        yield tmp
        # A writer may have replaced the file with one of its own mode (safetensors writes 0600).
        os.chmod(tmp, usual)
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_dir(out.parent)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], object], *, durable: bool = False
) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file beside it.

    The temporary file (``.<stem>.<random>.tmp<suffix>`` in the same folder, the usual mode)
    replaces ``path`` by a rename only when ``write`` returns; on an error it is removed and
    ``path`` is left as it was. Readers never see a half-written file. With ``durable`` the
    file and the folder are flushed to disk before and after the rename (checkpoints). The
    folder is created if needed. Returns ``path``.
    """
    with _replacing(path, durable) as tmp:
        write(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, durable: bool = False, **kwargs: Any
) -> Iterator[Any]:
    """``open`` for writing that replaces ``path`` only when the block ends without an error.

    As :func:`atomic_write`, for code that writes through a file object: ``mode`` is ``"w"``
    or ``"wb"``; ``kwargs`` go to ``open`` (``encoding``, ``newline``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files: mode 'w' or 'wb', not {mode!r}")
    with _replacing(path, durable) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
