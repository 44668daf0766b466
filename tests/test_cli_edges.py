"""Rough edges of the command line a new user hit (issue 14, sections 3 and 4).

* Pillow's ``DecompressionBombWarning`` never shows next to the package's own error.
* ``video --plot`` with a model without valence/arousal: the summary lists only written files.
* ``predict clip.mp4`` points to ``affectfpn video``; ``video photo.jpg`` points to ``predict``.
* Errors shown by the CLI name its flags (``-r``, ``--detector``, ``--end``), not keyword
  arguments, while the library's own messages keep the Python words.
* ``export --onnx`` writes a file with the usual permissions (``0666 & ~umask``).
"""

import os
import pickle
import stat
import struct
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hubserver import LocalHub, set_hf_offline
from PIL import Image

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.cli import EXIT_ERROR, EXIT_OK, main
from affectfpn.errors import (
    UNSET,
    AffectFPNError,
    ConfigError,
    Hint,
    InputError,
    OfflineError,
    WeightsError,
)
from affectfpn.io import iter_sources, load_image


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny three-task model (ResNet-18, FPN width 16, 64 px)."""
    torch.manual_seed(0)
    model = AffectFPN(AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64)))
    return model.save_pretrained(tmp_path_factory.mktemp("edges") / "tiny")


@pytest.fixture(scope="module")
def expression_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that predicts expressions only (like the embedded default)."""
    torch.manual_seed(0)
    config = AffectFPNConfig(
        backbone="resnet18", fpn_width=16, input_size=(64, 64), tasks=("expression",)
    )
    return AffectFPN(config).save_pretrained(tmp_path_factory.mktemp("edges") / "expr")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("affectfpn: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` RGB pixels, with one tiny IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _synthetic_video(path: Path, frames: int = 6, fps: float = 10.0) -> Path:
    """An MJPG video of ``frames`` 64 x 48 frames whose brightness changes every frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((48, 64, 3), 10 + 20 * i, dtype=np.uint8)
        frame[10:30, 20:44] = 255 - 20 * i
        writer.write(frame)
    writer.release()
    return path


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture
def recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised in the test (none is filtered out beforehand)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


# A header between Pillow's warning limit (89.5 megapixels) and its error limit (twice that).
_WARNING_SIZED = (10_000, 9_000)


# ----------------------------------------------------------------------------- 1. bomb warning
def test_a_large_image_gives_the_package_error_without_pillows_warning(
    recorded: list[warnings.WarningMessage],
) -> None:
    before = list(warnings.filters)
    with pytest.raises(InputError, match="decompression bomb") as info:
        load_image(_png_header_only(*_WARNING_SIZED), name="big.png")
    assert "10000x9000" in str(info.value)
    bombs = [w for w in recorded if issubclass(w.category, Image.DecompressionBombWarning)]
    assert bombs == []
    assert warnings.filters == before  # no filter is left behind


def test_the_bomb_error_is_the_same_when_warnings_are_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="decompression bomb") as info:
            load_image(_png_header_only(*_WARNING_SIZED), name="big.png")
    assert "10000x9000" in str(info.value)


def test_the_bomb_filter_is_undone_when_threads_overlap() -> None:
    from concurrent.futures import ThreadPoolExecutor

    before = list(warnings.filters)
    data = _png_header_only(*_WARNING_SIZED)

    def refuse(_: int) -> str:
        try:
            load_image(data, name="big.png")
        except InputError as err:
            return str(err)
        return "accepted"

    with ThreadPoolExecutor(max_workers=4) as pool:
        messages = list(pool.map(refuse, range(32)))
    assert all("decompression bomb" in m for m in messages)
    assert warnings.filters == before


def test_cli_bomb_error_is_one_line_without_warning_or_python_words(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    recorded: list[warnings.WarningMessage],
) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(_png_header_only(*_WARNING_SIZED))
    code, out, err = _run(capsys, "predict", str(big), "--model", str(model_dir), "--faces", "crop")
    assert code == EXIT_ERROR
    assert out == ""
    line = _one_error_line(err, "big.png", "decompression bomb", "downscale")
    assert "max_pixels" not in line
    assert not [w for w in recorded if issubclass(w.category, Image.DecompressionBombWarning)]


# ----------------------------------------------------------------------------- 2. plot summary
def test_video_plot_of_a_model_without_valence_arousal_is_written_and_listed(
    expression_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plot works with every model: an expression-only model gets its timeline (expression
    probabilities over time), and the summary lists it."""
    pytest.importorskip("matplotlib")
    video = _synthetic_video(tmp_path / "clip.avi")
    out_csv, plot = tmp_path / "clip.csv", tmp_path / "timeline.png"
    code, out, err = _run(
        capsys,
        "video",
        str(video),
        "--model",
        str(expression_model_dir),
        "--faces",
        "crop",
        "--csv",
        str(out_csv),
        "--plot",
        str(plot),
    )
    assert code == EXIT_OK, err
    assert out == ""
    assert out_csv.is_file()
    assert plot.is_file()
    summary = [line for line in err.splitlines() if "frame(s) of" in line]
    assert len(summary) == 1, err
    assert str(out_csv) in summary[0]
    assert f"plot {plot}" in summary[0]
    assert not [line for line in err.splitlines() if "warning" in line], err


def test_video_plot_alone_with_a_model_without_valence_arousal(
    expression_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The help's own example (--plot alone) runs with a model that has no valence/arousal."""
    pytest.importorskip("matplotlib")
    video = _synthetic_video(tmp_path / "clip.avi")
    plot = tmp_path / "timeline.png"
    code, out, err = _run(
        capsys,
        "video",
        str(video),
        "--model",
        str(expression_model_dir),
        "--faces",
        "crop",
        "--plot",
        str(plot),
    )
    assert code == EXIT_OK, err
    assert out == ""
    assert plot.is_file()


def test_video_summary_lists_no_plot_when_no_face_was_found(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    video = _synthetic_video(tmp_path / "flat.avi")  # no face for YuNet to find
    out_csv, plot = tmp_path / "flat.csv", tmp_path / "va.png"
    code, _, err = _run(
        capsys,
        "video",
        str(video),
        "--model",
        str(model_dir),
        "--csv",
        str(out_csv),
        "--plot",
        str(plot),
    )
    assert code == EXIT_OK, err
    assert not plot.exists()
    summary = [line for line in err.splitlines() if "frame(s) of" in line]
    assert len(summary) == 1, err
    assert "va.png" not in summary[0]


# ----------------------------------------------------------------------------- 3. image vs video
def test_predict_on_a_video_points_to_the_video_command(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = _synthetic_video(tmp_path / "clip.avi")
    code, out, err = _run(capsys, "predict", str(video), "--model", str(model_dir))
    assert code == EXIT_ERROR
    assert out == ""
    _one_error_line(err, str(video), "video", f"affectfpn video {video}")


@pytest.mark.shared
@pytest.mark.parametrize("name", ["WolfgangLanger_Pexels.mp4", "face_noface.mov"])
def test_predict_on_a_sample_video_points_to_the_video_command(
    name: str, samples_dir: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = samples_dir / name
    code, out, err = _run(capsys, "predict", str(video), "--model", str(model_dir))
    assert code == EXIT_ERROR
    assert out == ""
    _one_error_line(err, "video", f"affectfpn video {video}")


def test_load_image_on_a_video_says_it_is_a_video(tmp_path: Path) -> None:
    video = _synthetic_video(tmp_path / "clip.avi")
    with pytest.raises(InputError, match="video") as info:
        load_image(video)
    assert "predict_video" in str(info.value)
    mp4_named = tmp_path / "clip.bin"  # a video whatever its name: an MP4 'ftyp' box
    mp4_named.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64))
    with pytest.raises(InputError, match="video"):
        load_image(mp4_named)


def test_video_on_a_photo_points_to_the_predict_command(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path / "photo.png")
    code, out, err = _run(capsys, "video", str(photo), "--model", str(model_dir))
    assert code == EXIT_ERROR
    assert out == ""
    _one_error_line(err, str(photo), "image", f"affectfpn predict {photo}")
    unnamed = _photo(tmp_path / "snapshot")  # a still image without an image extension
    code, out, err = _run(capsys, "video", str(unnamed), "--model", str(model_dir))
    assert code == EXIT_ERROR
    assert out == ""
    _one_error_line(err, "image", "affectfpn predict")


@pytest.mark.shared
def test_video_on_a_sample_jpeg_points_to_the_predict_command(
    samples_dir: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = samples_dir / "single_face.jpg"
    code, out, err = _run(capsys, "video", str(photo), "--model", str(model_dir))
    assert code == EXIT_ERROR
    assert out == ""
    _one_error_line(err, "image", f"affectfpn predict {photo}")


# ----------------------------------------------------------------------------- 4. CLI words
def test_empty_folder_error_names_the_recursive_flag(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "predict", str(empty), "--model", str(model_dir))
    assert code == EXIT_ERROR
    line = _one_error_line(err, str(empty), "-r")
    assert "recursive=" not in line
    # the library keeps the Python words
    with pytest.raises(InputError, match=r"recursive=True"):
        list(iter_sources(empty))


def test_frame_range_error_names_the_flags(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = _synthetic_video(tmp_path / "clip.avi")
    code, _, err = _run(
        capsys,
        "video",
        str(video),
        "--model",
        str(model_dir),
        "--faces",
        "crop",
        "--start",
        "5",
        "--end",
        "3",
    )
    assert code == EXIT_ERROR
    line = _one_error_line(err, "--end 3", "--start 5")
    assert "end=" not in line
    assert "start=" not in line


def test_missing_detector_file_error_names_the_flag(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path / "photo.png")
    missing = tmp_path / "missing.onnx"
    code, _, err = _run(
        capsys, "predict", str(photo), "--model", str(model_dir), "--detector", str(missing)
    )
    assert code == EXIT_ERROR
    line = _one_error_line(err, str(missing), "--detector yunet")
    assert "model_path" not in line


def test_offline_hub_detector_error_names_the_flags(
    local_hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_hf_offline(monkeypatch, True)
    monkeypatch.delenv("AFFECTFPN_YUNET", raising=False)
    photo = _photo(tmp_path / "photo.png")
    code, _, err = _run(
        capsys, "predict", str(photo), "--model", str(model_dir), "--detector", "yunet-hub"
    )
    assert code == EXIT_ERROR
    line = _one_error_line(err, "--detector yunet", "--detector path/to/face_detection_yunet.onnx")
    for python_word in ("detector=", "model_path", "YuNetDetector(", " to predict "):
        assert python_word not in line


@pytest.mark.parametrize(
    ("error", "library", "cli"),
    [
        (
            InputError(
                "x: no image files (.jpg)", hint=Hint("recursive", True, "to search sub-folders")
            ),
            "x: no image files (.jpg); pass recursive=True to search sub-folders",
            "x: no image files (.jpg); pass -r (--recursive) to search sub-folders",
        ),
        (
            InputError("a.png: too large", hint=Hint("max_pixels", UNSET, "with a larger limit")),
            "a.png: too large; pass max_pixels= with a larger limit",
            "a.png: too large; if you trust the file, downscale it first",
        ),
        (
            WeightsError("u/m is gated", hint=Hint("token")),
            "u/m is gated; pass token=",
            "u/m is gated; set HF_TOKEN",
        ),
        (
            InputError("is not a file", option="exclude", value="x.txt"),
            "exclude='x.txt' is not a file",
            "--exclude x.txt is not a file",
        ),
        (
            ConfigError("is not valid; use one of 'detect', 'crop'", option="faces", value="x"),
            "faces='x' is not valid; use one of 'detect', 'crop'",
            "--faces x is not valid; use one of 'detect', 'crop'",
        ),
        (
            ConfigError("must be an integer >= 1, got 0", option="batch_size"),
            "batch_size must be an integer >= 1, got 0",
            "--batch-size must be an integer >= 1, got 0",
        ),
        (
            WeightsError(
                "h.xml: cannot load", hint=Hint("cascade_path", UNSET, "an OpenCV cascade XML")
            ),
            "h.xml: cannot load; pass cascade_path= an OpenCV cascade XML",
            "h.xml: cannot load; use the YuNet detector (--detector yunet)",
        ),
        (
            OfflineError(
                "not cached",
                hint=(
                    Hint("detector", "yunet", "for the embedded one"),
                    Hint("detector", "f.onnx"),
                ),
            ),
            "not cached; pass detector='yunet' for the embedded one, or pass detector='f.onnx'",
            "not cached; pass --detector yunet for the embedded one, or pass --detector f.onnx",
        ),
        # a parameter without a flag keeps its Python name; a hint about one is left out
        (
            ConfigError("must be > 0", option="alpha", value=0, hint=Hint("secret_knob", 3)),
            "alpha=0 must be > 0; pass secret_knob=3",
            "alpha=0 must be > 0",
        ),
        # a message that names no parameter is the same in both (paths are never rewritten)
        (
            InputError("/data/start=1/x.png: no such file"),
            "/data/start=1/x.png: no such file",
            "/data/start=1/x.png: no such file",
        ),
    ],
)
def test_errors_name_parameters_in_python_and_flags_on_the_command_line(
    error: AffectFPNError, library: str, cli: str
) -> None:
    from affectfpn.cli._common import cli_message

    assert str(error) == library
    assert cli_message(error) == cli
    # the structure survives pickling (errors cross process boundaries in data loaders)
    assert cli_message(pickle.loads(pickle.dumps(error))) == cli


# ----------------------------------------------------------------------------- 5. file mode
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_export_onnx_file_mode_follows_the_umask(model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from affectfpn.export import export_onnx

    model = AffectFPN.from_pretrained(model_dir)
    old = os.umask(0o027)
    try:
        path = export_onnx(model, tmp_path / "m.onnx", check=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_cli_export_onnx_has_the_mode_of_other_outputs(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnx")
    old = os.umask(0o022)
    try:
        onnx_path, folder = tmp_path / "m.onnx", tmp_path / "hub"
        code, _, err = _run(
            capsys,
            "export",
            "--model",
            str(model_dir),
            "--onnx",
            str(onnx_path),
            "--folder",
            str(folder),
            "--no-check",
            "--quiet",
        )
    finally:
        os.umask(old)
    assert code == EXIT_OK, err
    weights_mode = stat.S_IMODE((folder / "model.safetensors").stat().st_mode)
    assert weights_mode == 0o644
    assert stat.S_IMODE(onnx_path.stat().st_mode) == weights_mode


@pytest.mark.shared
def test_min_face_builds_the_yunet_it_asks_for(
    capsys: pytest.CaptureFixture[str], samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affectfpn.inference.predictor as predictor_module

    seen: list[object] = []
    real = predictor_module.Predictor

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["detector"])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor_module, "Predictor", recording)
    photo = str(samples_dir / "multi_face.jpg")
    rows = {}
    for value in ("default", "0", "20"):
        flags = [] if value == "default" else ["--min-face", value]
        code, out, err = _run(capsys, "predict", photo, *flags, "-f", "json")
        assert code == EXIT_OK, err
        rows[value] = len(__import__("json").loads(out)[0]["faces"])
    assert rows == {"default": 5, "0": 5, "20": 5}
    assert seen[0] == "auto"  # the default goes through as the name
    assert [getattr(d, "min_face", "?") for d in seen[1:]] == [None, 20.0]
    code, _, err = _run(capsys, "predict", photo, "--min-face", "20", "--detector", "haar")
    assert code == EXIT_ERROR
    assert "--min-face applies to the YuNet detector" in err
    code, _, err = _run(capsys, "predict", photo, "--min-face", "-1")
    assert code != EXIT_OK
    assert "--min-face" in err
