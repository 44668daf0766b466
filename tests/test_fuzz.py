"""Property-based tests: ``load_image`` and ``predict`` on hostile input never misbehave.

Whatever they are given (random bytes, damaged JPEG/PNG/GIF/BMP/WebP/TIFF files, files with a
wrong extension, empty data, zero-size and 1x1 images, NaN/inf arrays and tensors, wrong shapes
and dtypes), the outcome is a valid result or an :class:`~affectfpn.errors.InputError` whose
message names the input: never another exception type, a crash, a hang or a result holding
garbage (NaN, values out of range, a shape that is not the input's).

Every example runs under a watchdog thread (``HANG_LIMIT``): a decoder stuck in a loop fails the
test instead of stalling CI. Hypothesis runs derandomized (the same examples on every run, no
example database), with few examples per test to stay fast on one shared core.
"""

import io
import math
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.errors import InputError
from affectfpn.inference import ImagePrediction, Predictor, YuNetDetector, predict, predict_iter
from affectfpn.io import iter_sources, load_image

# Damaged files make Pillow warn (e.g. "Corrupt EXIF data") before it succeeds or fails.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

#: Seconds after which one example counts as hung.
HANG_LIMIT = 20.0

_T = TypeVar("_T")


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=10),  # generous: the machine is shared and busy
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _bounded(call: Callable[[], _T], limit: float = HANG_LIMIT) -> _T:
    """Run ``call`` in a watchdog thread; fail if it has not returned after ``limit`` seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="fuzz-watchdog")
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"hang: the call was still running after {limit:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _outcome(call: Callable[[], _T], name: str) -> _T | InputError:
    """The result of ``call``, or the InputError it raised (which must name the input).

    Any other exception propagates and fails the test.
    """
    try:
        return _bounded(call)
    except InputError as err:
        error = err
    assert name in str(error), f"the error does not name {name!r}: {error}"
    event("outcome: InputError")
    return error


# --------------------------------------------------------------------------- strategies

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
#: File signatures followed by noise: garbage that reaches each format's parser.
MAGICS = (
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xc0\x00\x11\x08",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"MM\x00*",
    b"",
)


@st.composite
def encoded_images(draw: st.DrawFn) -> tuple[bytes, str, tuple[int, int] | None]:
    """``(data, what, size)``: an encoded image, intact or damaged, or noise.

    ``size`` is ``(height, width)`` of an intact image, else ``None``.
    """
    kind = draw(st.sampled_from(["intact", "truncated", "bit flip", "spliced", "noise"]))
    if kind == "noise":
        data = draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=300))
        return data, f"noise ({len(data)} bytes)", None
    fmt = draw(st.sampled_from(FORMATS))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert("P") if mode == "P" else image.convert(mode)
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = buffer.getvalue()
    what = f"{kind} {fmt} {mode} {width}x{height}"
    if kind == "intact":
        return data, what, (height, width)
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncated":
        data = data[:at]
    elif kind == "bit flip":
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    else:
        data = data[:at] + draw(st.binary(min_size=1, max_size=40)) + data[at:]
    return data, f"{what} at byte {at}", None


ARRAY_DTYPES = (
    np.uint8,
    np.uint16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
)


def arrays() -> st.SearchStrategy[np.ndarray]:
    """Arrays of every dtype, 0 to 5 dimensions with sides 0 to 6, NaN and inf included."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6)
    return st.sampled_from(ARRAY_DTYPES).flatmap(lambda dtype: hnp.arrays(np.dtype(dtype), shapes))


def _unit_float_arrays() -> st.SearchStrategy[np.ndarray]:
    """Valid-looking float images (H x W x C), sometimes poisoned with NaN or inf."""
    shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 3, 4]))
    values = st.floats(0.0, 1.0, width=32) | st.sampled_from([math.nan, math.inf, -math.inf])
    return hnp.arrays(np.float32, shapes, elements=values)


TENSOR_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool)


def tensors() -> st.SearchStrategy[torch.Tensor]:
    """Arbitrary tensors, and valid-looking C x H x W float ones (sometimes poisoned)."""
    return _arbitrary_tensors() | _unit_float_arrays().map(
        lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    )


@st.composite
def _arbitrary_tensors(draw: st.DrawFn) -> torch.Tensor:
    """Tensors of several dtypes and 0 to 5 dimensions, NaN and inf included for floats."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))
    dtype = draw(st.sampled_from(TENSOR_DTYPES))
    if dtype.is_floating_point:
        values = draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
        return torch.from_numpy(values).to(dtype)
    if dtype == torch.bool:
        return torch.from_numpy(draw(hnp.arrays(np.bool_, shape)))
    values = draw(hnp.arrays(np.int64, shape, elements=st.integers(-10, 300)))
    return torch.from_numpy(values).to(dtype)


def _expected_size_of_array(values: np.ndarray) -> tuple[int, int] | None:
    """``(H, W)`` if ``values`` is an acceptable image array, else ``None`` (must be refused)."""
    if values.ndim not in (2, 3) or values.size == 0:
        return None
    if values.ndim == 3 and values.shape[2] not in (1, 3, 4):
        return None
    kind = values.dtype.kind
    if kind == "c":
        return None
    if kind == "f":
        if not np.isfinite(values).all():
            return None
        if values.min() < -1e-4 or values.max() > 1 + 1e-4:
            return None
    elif kind in "iu" and values.dtype != np.uint16 and (values.min() < 0 or values.max() > 255):
        return None
    return int(values.shape[0]), int(values.shape[1])


def _expected_size_of_tensor(tensor: torch.Tensor) -> tuple[int, int] | None:
    """``(H, W)`` if ``tensor`` is an acceptable image tensor, else ``None``."""
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            return None
        tensor = tensor[0]
    if tensor.ndim == 3:
        if tensor.shape[0] not in (1, 3, 4):
            return None
        tensor = tensor.permute(1, 2, 0)
    elif tensor.ndim != 2:
        return None
    array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    return _expected_size_of_array(array)


def _assert_valid_rgb(rgb: np.ndarray, size: tuple[int, int] | None) -> None:
    assert isinstance(rgb, np.ndarray)
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3
    assert rgb.shape[2] == 3
    assert rgb.shape[0] >= 1
    assert rgb.shape[1] >= 1
    assert rgb.flags.c_contiguous
    if size is not None:
        assert rgb.shape[:2] == size


# --------------------------------------------------------------------------- load_image


@pytest.fixture(scope="module")
def file_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_files")


@_settings(80)
@given(
    encoded=encoded_images(),
    as_file=st.booleans(),
    suffix=st.sampled_from([".jpg", ".png", ".gif", ".txt", "", ".webp", ".JPEG"]),
)
def test_load_image_on_damaged_files_and_noise(
    file_dir: Path, encoded: tuple[bytes, str, tuple[int, int] | None], as_file: bool, suffix: str
) -> None:
    data, what, size = encoded
    event(f"input: {what.split(' ')[0]}")
    if as_file:  # any extension: the content decides, never the name
        path = file_dir / f"input{suffix}"
        path.write_bytes(data)
        src: object = path
        name = str(path)
    else:
        src, name = data, "<fuzz bytes>"
    outcome = _outcome(lambda: load_image(src, name=None if as_file else name), name)
    if isinstance(outcome, InputError):
        assert size is None, f"an intact image was refused ({what}): {outcome}"
        return
    assert data, "empty data must be refused"
    _assert_valid_rgb(outcome.rgb, size)
    assert outcome.source == name


@_settings(60)
@given(values=arrays() | _unit_float_arrays(), bgr=st.booleans())
def test_load_image_on_arbitrary_arrays(values: np.ndarray, bgr: bool) -> None:
    expected = _expected_size_of_array(values)
    outcome = _outcome(lambda: load_image(values, bgr=bgr, name="<fuzz array>"), "<fuzz array>")
    if isinstance(outcome, InputError):
        assert expected is None, f"a valid {values.dtype} {values.shape} array was refused"
        return
    assert expected is not None, f"{values.dtype} {values.shape} should have been refused"
    _assert_valid_rgb(outcome.rgb, expected)
    if values.dtype == np.uint8 and values.ndim == 3 and values.shape[2] == 3:
        want = values[:, :, ::-1] if bgr else values
        np.testing.assert_array_equal(outcome.rgb, want)
    assert not np.shares_memory(outcome.rgb, values)


@_settings(50)
@given(tensor=tensors())
def test_load_image_on_arbitrary_tensors(tensor: torch.Tensor) -> None:
    expected = _expected_size_of_tensor(tensor)
    outcome = _outcome(lambda: load_image(tensor, name="<fuzz tensor>"), "<fuzz tensor>")
    if isinstance(outcome, InputError):
        assert expected is None, f"a valid {tensor.dtype} {tuple(tensor.shape)} was refused"
        return
    assert expected is not None, f"{tensor.dtype} {tuple(tensor.shape)} should have been refused"
    _assert_valid_rgb(outcome.rgb, expected)


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def model() -> AffectFPN:
    torch.manual_seed(0)
    config = AffectFPNConfig(backbone="resnet18", fpn_width=8, input_size=(32, 32))
    return AffectFPN(config).eval()


def _assert_sane(result: ImagePrediction, model: AffectFPN) -> None:
    """Every number of every face is finite and within its range."""
    assert result.width >= 1
    assert result.height >= 1
    for face in result:
        assert face.va is not None
        assert face.expression is not None
        assert face.aus is not None
        assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in face.va)
        probabilities = list(face.expression.probabilities.values())
        assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities)
        assert abs(sum(probabilities) - 1.0) < 1e-4
        assert face.expression.names == model.config.expressions
        aus = list(face.aus.probabilities.values())
        assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in aus)
        assert face.box is not None
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= result.width
        assert 0 <= y1 < y2 <= result.height


def _inputs() -> st.SearchStrategy[tuple[object, tuple[int, int] | None]]:
    """``(input, expected (H, W) or None when it must be refused)``."""
    return st.one_of(
        encoded_images().map(lambda e: (e[0], e[2])),
        (arrays() | _unit_float_arrays()).map(lambda a: (a, _expected_size_of_array(a))),
        tensors().map(lambda t: (t, _expected_size_of_tensor(t))),
    )


#: How predict names a single input of each type (then a space and its position).
_NAMES = {bytes: "<bytes", np.ndarray: "<array", torch.Tensor: "<tensor"}


def _is_batch(item: object) -> bool:
    return isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4


@_settings(35)
@given(case=_inputs())
def test_predict_crop_mode_on_hostile_input(
    model: AffectFPN, case: tuple[object, tuple[int, int] | None]
) -> None:
    item, size = case
    name = _NAMES[type(item)]
    outcome = _outcome(lambda: predict(model, item, faces="crop", num_workers=0), name)
    if isinstance(outcome, InputError):
        assert size is None or _is_batch(item)
        return
    results = outcome if isinstance(outcome, list) else [outcome]
    if not _is_batch(item):
        assert isinstance(outcome, ImagePrediction)
    for result in results:
        assert len(result) == 1  # crop mode: the image is the face
        _assert_sane(result, model)
        assert result[0].box == (0.0, 0.0, float(result.width), float(result.height))
    if size is not None and isinstance(outcome, ImagePrediction):
        assert (outcome.height, outcome.width) == size


def _good(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)


#: Inputs that must be refused, each as it appears in a list.
_BAD_ITEMS: tuple[Callable[[], object], ...] = (
    lambda: b"",
    lambda: b"GIF89a\x01\x00",
    lambda: np.full((4, 4, 3), np.nan, np.float32),
    lambda: np.zeros((0, 4, 3), np.uint8),
    lambda: np.zeros((4, 4, 2), np.uint8),
    lambda: torch.full((3, 4, 4), math.inf),
    lambda: np.zeros((1, 1, 1, 1, 1), np.uint8),
)


@_settings(30)
@given(
    plan=st.lists(
        st.one_of(
            st.integers(0, 1000).map(lambda s: ("good", s)),
            st.tuples(st.just("bad"), st.integers(0, len(_BAD_ITEMS) - 1)),
        ),
        min_size=1,
        max_size=6,
    ),
    batch_size=st.integers(1, 4),
)
def test_predict_loses_no_good_input_among_bad_ones(
    model: AffectFPN, plan: list[tuple[str, int]], batch_size: int
) -> None:
    items = [_good(i) if kind == "good" else _BAD_ITEMS[i]() for kind, i in plan]
    names = [name for name, _ in iter_sources(items)]
    assert len(names) == len(items)
    good_names = [n for n, (kind, _) in zip(names, plan, strict=True) if kind == "good"]

    skipped = _bounded(
        lambda: predict(
            model, items, faces="crop", on_error="skip", batch_size=batch_size, num_workers=0
        )
    )
    assert isinstance(skipped, list)
    assert [r.source for r in skipped] == good_names  # every good input, in order, once
    for result in skipped:
        _assert_sane(result, model)

    # on_error="raise": every result before the first bad input arrives, then its error
    first_bad = next((k for k, (kind, _) in enumerate(plan) if kind == "bad"), None)
    delivered: list[str] = []

    def consume() -> None:
        stream = predict_iter(model, items, faces="crop", batch_size=batch_size, num_workers=0)
        delivered.extend(r.source for r in stream)

    if first_bad is None:
        _bounded(consume)
        assert delivered == names
    else:
        with pytest.raises(InputError) as info:
            _bounded(consume)
        assert names[first_bad] in str(info.value)
        assert delivered == names[:first_bad]


# --------------------------------------------------------------------------- detect mode


@pytest.fixture(scope="module")
def yunet(yunet_path: Path) -> YuNetDetector:
    return YuNetDetector(yunet_path)


@pytest.mark.shared
@_settings(12)
@given(case=_inputs())
def test_predict_detect_mode_on_hostile_input(
    model: AffectFPN, yunet: YuNetDetector, case: tuple[object, tuple[int, int] | None]
) -> None:
    item, size = case
    predictor = Predictor(model, detector=yunet, num_workers=0)
    outcome = _outcome(lambda: predictor.predict(item), _NAMES[type(item)])
    if isinstance(outcome, InputError):
        assert size is None or _is_batch(item)
        return
    for result in outcome if isinstance(outcome, list) else [outcome]:
        _assert_sane(result, model)  # usually no face in noise: an empty, valid result
        assert [f.face_id for f in result] == list(range(len(result)))


@pytest.mark.shared
@pytest.mark.parametrize(
    "shape", [(1, 1, 3), (2, 2, 3), (1, 900, 3), (900, 1, 3), (3, 5), (16, 16, 4)]
)
def test_detect_mode_on_degenerate_sizes(
    model: AffectFPN, yunet: YuNetDetector, shape: tuple[int, ...]
) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    result = _bounded(lambda: predict(model, image, detector=yunet, num_workers=0))
    assert isinstance(result, ImagePrediction)
    assert (result.height, result.width) == shape[:2]
    _assert_sane(result, model)
