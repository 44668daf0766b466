"""Tests of image loading (affectfpn.io): every input kind, colour mode and bad file."""

import dataclasses
import io
import itertools
import os
import stat
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from affectfpn.errors import InputError
from affectfpn.io import (
    LoadedImage,
    array_to_rgb,
    is_image_path,
    iter_sources,
    list_images,
    load_image,
)


def _png_bytes(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def photo() -> np.ndarray:
    """A small synthetic colour image with distinct rows and columns (24 x 32)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- input kinds


@pytest.mark.shared
def test_every_input_kind_gives_the_same_pixels(samples_dir: Path) -> None:
    path = samples_dir / "single_face.jpg"
    with Image.open(path) as im:
        assert im.getexif().get(0x0112, 1) == 1  # no rotation: plain decode is the reference
        reference = np.asarray(im.convert("RGB"))
    data = path.read_bytes()
    chw = torch.from_numpy(reference.copy()).permute(2, 0, 1)
    inputs = {
        "str": str(path),
        "path": path,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "file": io.BytesIO(data),
        "pil": Image.open(path),
        "array": reference.copy(),
        "bgr": np.ascontiguousarray(reference[:, :, ::-1]),
        "float array": reference.astype(np.float32) / 255.0,
        "uint16 array": reference.astype(np.uint16) * 257,
        "tensor": chw,
        "batched tensor": chw[None],
        "float tensor": chw.float() / 255.0,
        "half tensor": chw.half() / 255.0,
    }
    for kind, src in inputs.items():
        loaded = load_image(src, bgr=(kind == "bgr"))
        assert loaded.rgb.dtype == np.uint8, kind
        assert loaded.rgb.flags.c_contiguous, kind
        np.testing.assert_array_equal(loaded.rgb, reference, err_msg=kind)
    assert load_image(str(path)).source == str(path)
    assert load_image(data).source == "<bytes>"
    assert load_image(reference, name="<array 7>").source == "<array 7>"


def test_result_never_shares_memory_with_the_input(photo: np.ndarray) -> None:
    loaded = load_image(photo)
    assert not np.shares_memory(loaded.rgb, photo)
    loaded.rgb[0, 0] = 255 - photo[0, 0]
    assert not np.array_equal(loaded.rgb[0, 0], photo[0, 0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.source = "other"  # type: ignore[misc]


def test_non_contiguous_array_is_copied_contiguous(photo: np.ndarray) -> None:
    view = photo[::2, ::-1]
    loaded = load_image(view)
    assert loaded.rgb.flags.c_contiguous
    np.testing.assert_array_equal(loaded.rgb, view)


def test_loaded_image_rejects_a_bad_array() -> None:
    with pytest.raises(InputError, match="H x W x 3 uint8"):
        LoadedImage(rgb=np.zeros((4, 4), np.uint8), source="x")
    image = LoadedImage(rgb=np.zeros((4, 6, 3), np.uint8), source="x")
    assert (image.height, image.width) == (4, 6)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)

    rgb = load_image(path).rgb
    assert rgb.shape == (40, 20, 3)  # upright: now 20 wide and 40 high
    top, bottom = rgb[:15].reshape(-1, 3).mean(0), rgb[-15:].reshape(-1, 3).mean(0)
    assert top[0] > 200
    assert top[2] < 60
    assert bottom[2] > 200
    assert bottom[0] < 60
    np.testing.assert_array_equal(load_image(path.read_bytes()).rgb, rgb)
    with Image.open(path) as im:
        np.testing.assert_array_equal(load_image(im).rgb, rgb)


# --------------------------------------------------------------------------- colour modes


def _grey() -> np.ndarray:
    return np.arange(48, dtype=np.uint8).reshape(6, 8) * 5


def test_mode_l_and_1() -> None:
    grey = _grey()
    rgb = load_image(_png_bytes(Image.fromarray(grey))).rgb
    np.testing.assert_array_equal(rgb, np.repeat(grey[:, :, None], 3, axis=2))
    bits = grey > 100
    rgb1 = load_image(_png_bytes(Image.fromarray(bits))).rgb
    np.testing.assert_array_equal(rgb1[:, :, 1], np.where(bits, 255, 0))


def test_mode_la_drops_alpha_and_whitens_fully_transparent_pixels() -> None:
    grey = _grey()
    alpha = np.full_like(grey, 255)
    alpha[0, :] = 0  # fully transparent row
    alpha[1, :] = 100  # half transparent: keeps its stored grey
    la = Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA")
    rgb = load_image(_png_bytes(la)).rgb
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    expected[0] = 255
    np.testing.assert_array_equal(rgb, expected)


def test_mode_rgba_and_bgra_arrays(photo: np.ndarray) -> None:
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, 0] = 0
    alpha[:, 1] = 1
    rgba = np.dstack([photo, alpha])
    expected = photo.copy()
    expected[:, 0] = 255
    for src in (rgba, Image.fromarray(rgba, mode="RGBA"), _png_bytes(Image.fromarray(rgba))):
        np.testing.assert_array_equal(load_image(src).rgb, expected)
    bgra = np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(load_image(bgra, bgr=True).rgb, expected)


def test_mode_p_with_and_without_transparency(photo: np.ndarray) -> None:
    palette_image = Image.fromarray(photo).quantize(colors=16)
    expected = np.asarray(palette_image.convert("RGB"))
    np.testing.assert_array_equal(load_image(_png_bytes(palette_image)).rgb, expected)

    index = np.asarray(palette_image)
    transparent_index = int(index[0, 0])
    data = _png_bytes(palette_image, transparency=transparent_index)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "P"
        assert im.info.get("transparency") == transparent_index
    rgb = load_image(data).rgb
    hidden = index == transparent_index
    assert hidden.any()
    assert not hidden.all()
    assert (rgb[hidden] == 255).all()
    np.testing.assert_array_equal(rgb[~hidden], expected[~hidden])


def test_16_bit_modes_are_scaled_not_clipped() -> None:
    grey = _grey()
    data = _png_bytes(Image.fromarray(grey.astype(np.uint16) * 257))
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode.startswith("I;16")
    np.testing.assert_array_equal(load_image(data).rgb[:, :, 0], grey)

    wide = Image.fromarray(grey.astype(np.int32) * 257, mode="I")  # 16-bit data in mode I
    np.testing.assert_array_equal(load_image(wide).rgb[:, :, 2], grey)
    narrow = Image.fromarray(grey.astype(np.int32), mode="I")  # 8-bit data in mode I
    np.testing.assert_array_equal(load_image(narrow).rgb[:, :, 2], grey)


def test_mode_f_and_cmyk(photo: np.ndarray) -> None:
    unit = (_grey() / 255.0).astype(np.float32)
    tiff = _png_bytes(Image.fromarray(unit, mode="F"), "TIFF")
    np.testing.assert_array_equal(load_image(tiff).rgb[:, :, 0], _grey())
    eight_bit = Image.fromarray(_grey().astype(np.float32), mode="F")
    np.testing.assert_array_equal(load_image(eight_bit).rgb[:, :, 0], _grey())

    cmyk = Image.fromarray(photo).convert("CMYK")
    data = _png_bytes(cmyk, "TIFF")
    np.testing.assert_array_equal(load_image(data).rgb, np.asarray(cmyk.convert("RGB")))


def test_array_dtypes(photo: np.ndarray) -> None:
    np.testing.assert_array_equal(load_image(photo.astype(np.int64)).rgb, photo)
    mask = photo[:, :, 0] > 128
    np.testing.assert_array_equal(load_image(mask).rgb[:, :, 2], mask * 255)
    sixteen = np.array([[0, 257, 65535, 32896]], np.uint16)
    np.testing.assert_array_equal(load_image(sixteen).rgb[0, :, 0], [0, 1, 255, 128])
    grey3 = load_image(photo[:, :, :1]).rgb
    np.testing.assert_array_equal(grey3, np.repeat(photo[:, :, :1], 3, axis=2))


def test_one_pixel_images_load() -> None:
    pixel = np.array([[[10, 20, 30]]], np.uint8)
    for src in (
        pixel,
        torch.from_numpy(pixel).permute(2, 0, 1),
        _png_bytes(Image.fromarray(pixel)),
        Image.fromarray(pixel[:, :, 0]),
    ):
        assert load_image(src).rgb.shape == (1, 1, 3)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((4, 4), np.inf), "NaN or infinite"),
        (np.full((4, 4, 3), 200.0), "divide by 255"),
        (np.full((4, 4, 3), -0.5), r"\[0, 1\]"),
        (np.zeros((4, 4, 2), np.uint8), "C in 1, 3, 4"),
        (np.zeros((3, 8, 9), np.uint8), "transpose"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((2, 4, 4, 3), np.uint8), "batch"),
        (np.zeros(5, np.uint8), "H x W"),
        (np.full((2, 2), 300, np.int32), "0..255"),
        (np.zeros((2, 2), np.complex64), "unsupported dtype"),
    ],
)
def test_bad_arrays_are_refused(values: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        load_image(values, name="<array 3>")
    assert str(info.value).startswith("<array 3>")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        (torch.full((3, 4, 4), 2.0), r"\[0, 1\]"),
        (torch.zeros(2, 3, 4, 4), "batch of 2"),
        (torch.zeros(4, 4, 3, 5), "batch"),
        (torch.zeros(8, 8, 3), "permute"),
        (torch.zeros(3, 0, 4), "empty"),
        (torch.zeros(5), "C x H x W"),
    ],
)
def test_bad_tensors_are_refused(tensor: torch.Tensor, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_image(tensor)


def test_missing_file_directory_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as info:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(info.value)
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(empty)
    with pytest.raises(InputError, match="empty"):
        load_image(b"")
    with pytest.raises(InputError, match="URL"):
        load_image("https://example.com/face.jpg")
    with pytest.raises(InputError, match="not an image input"):
        load_image(42)


def test_files_are_read_whole_whatever_their_reported_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One read of fstat's size is the fast path; a stale size (a file written meanwhile) or a
    # pipe must still give every byte.
    from affectfpn import io as aio

    content = bytes(range(256)) * 300  # 76,800 bytes: more than one read of 64 KiB
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    assert aio._read_file(str(path)) == content
    real_fstat = os.fstat
    for wrong in (0, 1000, len(content) - 1, len(content) + 1, 10 * len(content)):

        def fake_fstat(fd: int, wrong: int = wrong) -> Any:
            info = real_fstat(fd)
            return os.stat_result((info.st_mode, *info[1:6], wrong, *info[7:]))

        monkeypatch.setattr(aio.os, "fstat", fake_fstat)
        assert aio._read_file(str(path)) == content, wrong
    monkeypatch.undo()
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        import threading

        writer = threading.Thread(target=lambda: fifo.write_bytes(content))
        writer.start()
        try:
            assert aio._read_file(str(fifo)) == content
        finally:
            writer.join(timeout=10)


def test_wrong_extensions(tmp_path: Path, photo: np.ndarray) -> None:
    png_named_jpg = tmp_path / "really_a_png.jpg"
    png_named_jpg.write_bytes(_png_bytes(Image.fromarray(photo)))
    np.testing.assert_array_equal(load_image(png_named_jpg).rgb, photo)
    text_named_jpg = tmp_path / "notes.jpg"
    text_named_jpg.write_text("this is not an image\n" * 10)
    with pytest.raises(InputError, match="not an image file") as info:
        load_image(text_named_jpg)
    assert str(text_named_jpg) in str(info.value)


def test_random_bytes_are_refused() -> None:
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(InputError, match="not an image file"):
        load_image(noise)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(2)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = _png_bytes(noisy, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        load_image(path)
    assert "cut." in str(info.value)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` RGB pixels, with one tiny IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _png_header_only(100_000, 100_000)  # 10 gigapixels declared, 70-odd bytes on disk
    assert len(bomb) < 100
    decoders: list[str] = []
    real = Image._getdecoder

    def spy(mode: str, decoder_name: str, *args: Any, **kwargs: Any) -> Any:
        decoders.append(decoder_name)
        return real(mode, decoder_name, *args, **kwargs)

    load_image(_png_bytes(Image.fromarray(np.zeros((4, 4), np.uint8))))  # Pillow's plugins
    monkeypatch.setattr(Image, "_getdecoder", spy)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"bomb\.png.*decompression bomb"):
            load_image(bomb, name="bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused from the header (not timed: a loaded machine makes seconds flaky): no decoder was
    # made and no pixel buffer allocated.
    assert decoders == []
    assert peak < 2 * 2**20, f"{peak:,} bytes traced"
    # the spy does see decoding: a sensible size gets as far as the (missing) pixel data
    with pytest.raises(InputError):
        load_image(_png_header_only(8, 8), name="small.png")
    assert decoders == ["zip"]


def test_own_pixel_limit_is_checked_on_the_declared_size() -> None:
    header = _png_header_only(3000, 3000)  # below Pillow's limits, above ours here
    with pytest.raises(InputError, match="3000x3000") as info:
        load_image(header, max_pixels=1_000_000)
    assert "max_pixels" in str(info.value)
    small = _png_bytes(Image.fromarray(np.zeros((10, 10), np.uint8)))
    assert load_image(small, max_pixels=100).rgb.shape == (10, 10, 3)
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(small, max_pixels=99)


# --------------------------------------------------------------------------- iter_sources


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    tiny = _png_bytes(Image.fromarray(np.zeros((2, 2, 3), np.uint8)))
    for name in ("b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png", "sub/d.png"):
        target = tmp_path / name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(tiny)
    return tmp_path


def test_is_image_path() -> None:
    assert is_image_path("x/Photo.JPEG")
    assert is_image_path(Path("a.tiff"))
    assert not is_image_path("notes.txt")
    assert not is_image_path("folder")


def test_directory_expands_to_sorted_images(image_dir: Path) -> None:
    names = [Path(name).name for name, _ in iter_sources(image_dir)]
    assert names == ["a.JPG", "b.png", "c.webp"]
    deep = [p.relative_to(image_dir).as_posix() for p in list_images(image_dir, recursive=True)]
    assert deep == ["a.JPG", "b.png", "c.webp", "sub/d.png"]
    pairs = list(iter_sources(str(image_dir), recursive=True))
    assert [Path(name).name for name, _ in pairs] == ["a.JPG", "b.png", "c.webp", "d.png"]
    assert all(load_image(item).rgb.shape == (2, 2, 3) for _, item in pairs)


def test_directory_names_are_the_path_strings(
    image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Source names are str() of the listed Paths, however the folder was spelt.
    from affectfpn.io import _has_image_suffix

    monkeypatch.chdir(image_dir)
    spellings = [".", "./", "./sub/..", str(image_dir) + os.sep, "sub/../", Path(".")]
    for folder in spellings:
        names = [name for name, _ in iter_sources(folder)]
        assert names == [str(p) for p in list_images(folder)], folder
        assert names == [str(Path(folder) / n) for n in ["a.JPG", "b.png", "c.webp"]], folder
    for name in ["a.jpg", "b.JPEG", "c.Png", ".jpg", "..jpg", "d.", "e", "f.jpg.txt", "g.tar.png"]:
        assert _has_image_suffix(name) == is_image_path(name), name


def test_glob_pattern_expands(image_dir: Path) -> None:
    names = [Path(name).name for name, _ in iter_sources(str(image_dir / "*.png"))]
    assert names == ["b.png"]
    with pytest.raises(InputError, match="matches no image"):
        list(iter_sources(str(image_dir / "*.gif")))


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no image files"):
        list(iter_sources(tmp_path))


def test_batches_and_mixed_lists_get_names(photo: np.ndarray, tmp_path: Path) -> None:
    batch = np.stack([photo, photo[::-1]])
    tensors = torch.from_numpy(batch).permute(0, 3, 1, 2)
    path = tmp_path / "x.png"
    items = list(iter_sources([str(path), batch, tensors, b"abc", Image.fromarray(photo)]))
    names = [name for name, _ in items]
    assert names == [
        str(path),
        "<array 1>",
        "<array 2>",
        "<tensor 3>",
        "<tensor 4>",
        "<bytes 5>",
        "<PIL image 6>",
    ]
    np.testing.assert_array_equal(items[2][1], photo[::-1])
    np.testing.assert_array_equal(load_image(items[4][1]).rgb, photo[::-1])
    assert [name for name, _ in iter_sources(photo)] == ["<array 0>"]


def test_generator_inputs_stay_lazy(photo: np.ndarray) -> None:
    pulled = 0

    def many() -> Iterator[np.ndarray]:
        nonlocal pulled
        for _ in range(10_000):
            pulled += 1
            yield photo

    first = list(itertools.islice(iter_sources(many()), 3))
    assert [name for name, _ in first] == ["<array 0>", "<array 1>", "<array 2>"]
    assert pulled == 3


def test_unusable_inputs_are_refused_when_reached() -> None:
    stream = iter_sources([np.zeros((2, 2), np.uint8), 3.5])
    assert next(stream)[0] == "<array 0>"
    with pytest.raises(InputError, match="not an image input"):
        next(stream)
    with pytest.raises(InputError, match="mapping"):
        list(iter_sources({"a.jpg": 1}))


def test_array_to_rgb_is_exposed_for_detectors(photo: np.ndarray) -> None:
    grey = photo[:, :, 0]
    np.testing.assert_array_equal(array_to_rgb(grey)[:, :, 1], grey)
    with pytest.raises(InputError, match="<mine>"):
        array_to_rgb(np.zeros((2, 2, 5), np.uint8), source="<mine>")


# --------------------------------------------------------------------------- JPEG fast path


def _pillow_reference(data: bytes) -> np.ndarray:
    from PIL import ImageOps

    with Image.open(io.BytesIO(data)) as im:
        upright = ImageOps.exif_transpose(im)
        return np.asarray(upright.convert("RGB"))


def _jpegs() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    smooth = np.cumsum(rng.integers(0, 9, size=(37, 53, 3)), axis=1).clip(0, 255).astype(np.uint8)
    colour = Image.fromarray(smooth)
    rotated = Image.Exif()
    rotated[0x0112] = 6
    return {
        "colour 4:2:0": _png_bytes(colour, "JPEG", quality=90),
        "colour 4:4:4": _png_bytes(colour, "JPEG", quality=95, subsampling=0),
        "grey": _png_bytes(colour.convert("L"), "JPEG", quality=90),
        "progressive": _png_bytes(colour, "JPEG", quality=80, progressive=True),
        "exif rotated": _png_bytes(colour, "JPEG", quality=90, exif=rotated),
        "cmyk": _png_bytes(colour.convert("CMYK"), "JPEG", quality=90),
    }


@pytest.mark.parametrize("kind", list(_jpegs()))
def test_jpeg_decoding_matches_pillow_pixel_for_pixel(kind: str) -> None:
    # Plain JPEGs are decoded by OpenCV, the rest by Pillow: either way, Pillow's pixels.
    data = _jpegs()[kind]
    expected = _pillow_reference(data)
    got = load_image(data).rgb
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("kind", ["colour 4:2:0", "grey", "exif rotated"])
def test_jpeg_pixels_are_the_same_where_opencv_cannot_decode_to_rgb(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenCV before 4.11 has no IMREAD_COLOR_RGB: BGR decoding plus a conversion stands in.
    import cv2

    if not hasattr(cv2, "IMREAD_COLOR_RGB"):
        pytest.skip("this OpenCV has no IMREAD_COLOR_RGB: the fallback is the only path")
    data = _jpegs()[kind]
    direct = load_image(data).rgb
    monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB")
    fallback = load_image(data).rgb
    assert np.array_equal(direct, fallback)
    assert np.array_equal(fallback, _pillow_reference(data))


def test_only_complete_plain_jpegs_take_the_opencv_path() -> None:
    from affectfpn.io import _plain_jpeg_header

    jpegs = _jpegs()
    assert _plain_jpeg_header(jpegs["colour 4:2:0"]) == (53, 37)
    assert _plain_jpeg_header(jpegs["grey"]) == (53, 37)
    assert _plain_jpeg_header(jpegs["progressive"]) == (53, 37)
    assert _plain_jpeg_header(jpegs["cmyk"]) is None  # 4 components: Pillow converts them
    truncated = jpegs["colour 4:2:0"][:-40]
    assert _plain_jpeg_header(truncated) is None
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(truncated)
    assert _plain_jpeg_header(b"\xff\xd8\xff\xd9") is None
    assert _plain_jpeg_header(_png_bytes(Image.new("RGB", (4, 4)))) is None


def test_a_jpeg_bomb_is_refused_before_opencv_decodes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    data = _jpegs()["colour 4:2:0"]
    calls: list[int] = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(1) or real(*a))
    with pytest.raises(InputError, match="more than the limit"):
        load_image(data, max_pixels=100)
    assert calls == []
    assert load_image(data).rgb.shape == (37, 53, 3)
    assert calls == [1]


# ------------------------------------------------------------------------ writing files whole
def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    from affectfpn.io import atomic_open, atomic_write

    target = tmp_path / "sub" / "table.csv"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".table.")
        assert tmp.suffix == ".csv"  # writers that choose a format by the suffix still can
        tmp.write_text("a,b\n")

    assert atomic_write(target, write) == target
    assert target.read_text() == "a,b\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "a,b\n"  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]  # no leftovers

    def fails_midway() -> None:
        with atomic_open(target, "w") as handle:
            handle.write("x,y\n")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fails_midway()
    assert target.read_text() == "a,b\n"
    with atomic_open(target, "wb", durable=True) as handle:
        handle.write(b"x,y\n")
    assert target.read_bytes() == b"x,y\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"), atomic_open(target, "a"):
        pass

    def private(tmp: Path) -> None:  # as safetensors does: a new file of mode 0600
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"weights")
        os.close(fd)

    atomic_write(target, private)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


# ------------------------------------------------------------------------ reduced JPEG decoding
def _smooth_jpeg(width: int, height: int, **params: object) -> bytes:
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 200 // width, ys * 200 // height, (xs + ys) * 100 // (width + height)], -1)
    return _png_bytes(Image.fromarray(rgb.astype(np.uint8)), "JPEG", quality=95, **params)


def _area_shrunk(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb.reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))


@pytest.mark.parametrize(
    ("allowed", "expected"), [(1.0, 1), (1.9, 1), (2.0, 2), (5.3, 4), (64.0, 8)]
)
def test_jpeg_is_decoded_reduced_by_what_the_caller_allows(allowed: float, expected: int) -> None:
    data = _smooth_jpeg(128, 96)
    seen: list[tuple[int, int]] = []

    def reduce(width: int, height: int) -> float:
        seen.append((width, height))
        return allowed

    image = load_image(data, reduce=reduce)
    assert seen == [(128, 96)]  # asked once, with the file's own size
    assert image.reduction == expected
    assert image.rgb.shape == (96 // expected, 128 // expected, 3)
    assert image.full_size == (128, 96)
    full = load_image(data).rgb
    # libjpeg's scaled decoding is an area average of the full image, up to rounding
    assert np.abs(image.rgb - _area_shrunk(full, expected)).mean() < 1.5
    # full() decodes the very pixels of an ordinary load
    assert np.array_equal(image.full().rgb, full)
    assert image.full().reduction == 1


def test_reduction_divides_both_sides_or_is_not_used() -> None:
    # 4 divides 36 and 44 but 8 does not: the largest usable reduction is 4
    assert load_image(_smooth_jpeg(44, 36), reduce=lambda w, h: 8.0).reduction == 4
    # 53 x 37 has no even side: decoded in full, exactly as without reduce
    odd = _smooth_jpeg(53, 37)
    image = load_image(odd, reduce=lambda w, h: 8.0)
    assert image.reduction == 1
    assert image.full() is image
    assert np.array_equal(image.rgb, load_image(odd).rgb)


def test_reduced_decoding_keeps_the_exif_orientation() -> None:
    rotated = Image.Exif()
    rotated[0x0112] = 6  # stored sideways: the upright image is 96 wide and 128 high
    data = _smooth_jpeg(128, 96, exif=rotated)
    full = load_image(data).rgb
    assert full.shape == (128, 96, 3)
    image = load_image(data, reduce=lambda w, h: 4.0)
    assert image.reduction == 4
    assert image.rgb.shape == (32, 24, 3)
    assert image.full_size == (96, 128)
    assert np.abs(image.rgb - _area_shrunk(full, 4)).mean() < 1.5


def test_only_jpeg_paths_and_bytes_are_reduced(tmp_path: Path) -> None:
    data = _smooth_jpeg(64, 64)
    path = tmp_path / "face.jpg"
    path.write_bytes(data)
    always = lambda w, h: 8.0  # noqa: E731
    assert load_image(path, reduce=always).reduction == 8
    assert load_image(str(path), reduce=always).reduction == 8
    assert load_image(bytearray(data), reduce=always).reduction == 8
    png = _png_bytes(Image.open(io.BytesIO(data)))
    others: list[object] = [
        png,
        io.BytesIO(data),
        Image.open(io.BytesIO(data)),
        load_image(data).rgb,
    ]
    for other in others:
        assert load_image(other, reduce=always).reduction == 1


def test_reduced_decoding_still_refuses_bombs_and_broken_files() -> None:
    data = _smooth_jpeg(64, 64)
    with pytest.raises(InputError, match="more than the limit"):
        load_image(data, max_pixels=100, reduce=lambda w, h: 8.0)
    truncated = data[:-40]
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(truncated, reduce=lambda w, h: 8.0)


def test_alpha_is_dropped_keeping_colour_and_whitening_invisible_pixels() -> None:
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (19, 23, 4), dtype=np.uint8)
    rgba[::3, ::2, 3] = 0
    expected = rgba[..., :3].copy()
    expected[rgba[..., 3] == 0] = 255
    for source in (rgba, _png_bytes(Image.fromarray(rgba, "RGBA"))):
        got = load_image(source).rgb
        assert got.flags.c_contiguous
        assert np.array_equal(got, expected)


def test_predict_and_the_datasets_read_the_same_files_of_a_folder(tmp_path: Path) -> None:
    """One IMAGE_EXTENSIONS: a folder listed for prediction and the same folder read as an
    expression dataset (affectfpn evaluate / train) hold the same images, .gif and .pgm too."""
    import numpy as np
    from PIL import Image

    from affectfpn.data import IMAGE_EXTENSIONS as DATA_EXTENSIONS
    from affectfpn.data import ImageFolderExpressions
    from affectfpn.io import IMAGE_EXTENSIONS, list_images

    assert set(DATA_EXTENSIONS) == IMAGE_EXTENSIONS
    rng = np.random.default_rng(0)
    (tmp_path / "happy").mkdir()
    for ext in ("gif", "pgm", "ppm", "jpg", "webp"):
        pixels = (rng.random((24, 24)) * 255).astype("uint8")
        Image.fromarray(pixels).save(tmp_path / "happy" / f"a.{ext}")
    (tmp_path / "happy" / "a.txt").write_text("not an image")
    listed = {Path(p).name for p in list_images(tmp_path / "happy")}
    dataset = ImageFolderExpressions(tmp_path, image_size=(24, 24))
    assert (
        {Path(k).name for k in dataset.keys}
        == listed
        == {"a.gif", "a.pgm", "a.ppm", "a.jpg", "a.webp"}
    )
