"""Tests of video prediction (affectfpn.video): frames, tracks, smoothing, outputs, streaming.

Real videos come from ``shared/data/samples``; frame selection, smoothing wiring and memory are
tested on small synthetic videos written here, whose frames carry their own index as 8 black or
white bars (so a test can tell which frame OpenCV really decoded).
"""

import csv
import gc
import itertools
import math
import sys
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _drawn import outline_changed

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.errors import ConfigError, InputError
from affectfpn.inference import Predictor
from affectfpn.inference.results import (
    ActionUnits,
    Expression,
    FacePrediction,
    ValenceArousal,
    table_columns,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.video import (
    ABAW2_HEADERS,
    FaceTracker,
    FramePrediction,
    VideoResult,
    analyze_video,
    main_face,
    plot_va,
    predict_video,
    smooth_frames,
    video_table_columns,
    write_abaw2,
    write_annotated_video,
    write_video_csv,
)

WOLFGANG = "WolfgangLanger_Pexels.mp4"
FACE_NOFACE = "face_noface.mov"
NO_FACE = "no_face.mp4"
SYN_FPS = 20.0
SYN_SIZE = 64


@pytest.fixture(scope="module")
def model() -> AffectFPN:
    torch.manual_seed(0)
    config = AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64))
    return AffectFPN(config).eval()


# --------------------------------------------------------------------------- helpers


def _pattern(index: int) -> np.ndarray:
    """A BGR frame whose top half shows ``index`` in binary (8 bars), bottom half noise."""
    frame = np.zeros((SYN_SIZE, SYN_SIZE, 3), dtype=np.uint8)
    bar = SYN_SIZE // 8
    for bit in range(8):
        if (index >> bit) & 1:
            frame[: SYN_SIZE // 2, bit * bar : (bit + 1) * bar] = 255
    rng = np.random.default_rng(index)
    frame[SYN_SIZE // 2 :] = rng.integers(0, 256, (SYN_SIZE // 2, SYN_SIZE, 3), dtype=np.uint8)
    return frame


def _decode_pattern(rgb: np.ndarray) -> int:
    bar = SYN_SIZE // 8
    top = rgb[4 : SYN_SIZE // 2 - 4]
    return sum(
        1 << bit for bit in range(8) if top[:, bit * bar + 2 : (bit + 1) * bar - 2].mean() > 127
    )


def _write_synthetic(path: Path, n: int, fps: float = SYN_FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (SYN_SIZE, SYN_SIZE))
    assert writer.isOpened()
    for i in range(n):
        writer.write(_pattern(i))
    writer.release()
    return path


def _decoded_frame_count(path: Path) -> int:
    """Frames OpenCV decodes from ``path``, counted independently of affectfpn."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def _face(face_id: int, va: tuple[float, float], expr: np.ndarray | None = None) -> FacePrediction:
    expr = np.full(7, 1 / 7) if expr is None else expr
    return FacePrediction(
        face_id=face_id,
        box=(10.0 + face_id * 100, 10.0, 60.0 + face_id * 100, 70.0 + face_id * 5),
        score=0.9,
        va=ValenceArousal(*va),
        expression=Expression.from_probabilities(expr / expr.sum(), EXPRESSIONS),
        aus=ActionUnits.from_probabilities(np.full(12, 0.5 + 0.4 * va[0]), ACTION_UNITS),
    )


def _frame(index: int, faces: tuple[FacePrediction, ...] = ()) -> FramePrediction:
    return FramePrediction(
        source=f"v#frame={index}",
        width=320,
        height=240,
        faces=faces,
        index=index,
        timestamp=index / 25,
    )


def _valences(frames: list[FramePrediction], face_id: int = 0) -> np.ndarray:
    return np.array([f.va.valence for frame in frames for f in frame if f.face_id == face_id])  # type: ignore[union-attr]


# --------------------------------------------------------------------------- real videos


@pytest.fixture(scope="module")
def wolfgang_every8(model: AffectFPN, samples_dir: Path, yunet_path: Path) -> list[FramePrediction]:
    return list(predict_video(model, samples_dir / WOLFGANG, every_n=8, detector=str(yunet_path)))


@pytest.fixture(scope="module")
def no_face_frames(model: AffectFPN, samples_dir: Path, yunet_path: Path) -> list[FramePrediction]:
    return list(predict_video(model, samples_dir / NO_FACE, detector=str(yunet_path)))


@pytest.fixture(scope="module")
def face_noface_frames(
    model: AffectFPN, samples_dir: Path, yunet_path: Path
) -> list[FramePrediction]:
    return list(
        predict_video(model, samples_dir / FACE_NOFACE, every_n=3, detector=str(yunet_path))
    )


@pytest.mark.slow  # every frame of a 640x360 video through YuNet and the model: ~11 s
@pytest.mark.shared
def test_wolfgang_every_frame_is_one_face_track(
    model: AffectFPN, samples_dir: Path, yunet_path: Path
) -> None:
    # The longest test here: 19-38 s on one core (472 detections). Not marked slow (the rule
    # was: over 60 s); the every_n=8 variant below covers the same on 59 frames.
    frames = list(predict_video(model, samples_dir / WOLFGANG, detector=str(yunet_path)))
    assert [f.index for f in frames] == list(range(472))
    assert all(len(f) == 1 for f in frames)
    assert {f.faces[0].face_id for f in frames} == {0}
    stamps = np.array([f.timestamp for f in frames])
    assert np.all(np.diff(stamps) > 0)


@pytest.mark.shared
def test_wolfgang_every_8th_frame_has_one_face_with_one_id(
    wolfgang_every8: list[FramePrediction], samples_dir: Path
) -> None:
    frames = wolfgang_every8
    assert [f.index for f in frames] == list(range(0, 472, 8))
    assert all(len(f) == 1 for f in frames)
    assert {f.faces[0].face_id for f in frames} == {0}
    stamps = np.array([f.timestamp for f in frames])
    assert np.all(np.diff(stamps) > 0)
    # The container's times agree with index / fps for this constant-rate video.
    fps = cv2.VideoCapture(str(samples_dir / WOLFGANG)).get(cv2.CAP_PROP_FPS)
    np.testing.assert_allclose(stamps, [f.index / fps for f in frames], atol=1e-3)
    assert all(f.source == f"{samples_dir / WOLFGANG}#frame={f.index}" for f in frames)


@pytest.mark.shared
def test_no_face_video_gives_one_success_0_row_per_frame(
    no_face_frames: list[FramePrediction], samples_dir: Path, tmp_path: Path
) -> None:
    path = samples_dir / NO_FACE
    # The README says 98 frames (the MP4's sample count); an edit list hides 3 of them, so
    # OpenCV decodes fewer. Each decoded frame must give one row.
    decoded = _decoded_frame_count(path)
    declared = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)
    assert abs(decoded - declared) <= 0.05 * declared
    assert [f.index for f in no_face_frames] == list(range(decoded))
    assert all(len(f) == 0 and not f for f in no_face_frames)

    out = tmp_path / "no_face.csv"
    assert write_video_csv(no_face_frames, out) == decoded
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == decoded
    assert [int(r["frame"]) for r in rows] == list(range(decoded))
    assert {r["success"] for r in rows} == {"0"}
    assert {r["face_id"] for r in rows} == {"-1"}
    assert all(r["valence"] == "" and r["AU01_p"] == "" for r in rows)
    stamps = [float(r["timestamp"]) for r in rows]
    assert all(b > a for a, b in itertools.pairwise(stamps))


@pytest.mark.shared
def test_face_then_no_face_switches_once(face_noface_frames: list[FramePrediction]) -> None:
    present = [len(f) > 0 for f in face_noface_frames]
    assert [f.index for f in face_noface_frames] == list(range(0, 169, 3))
    assert present[0]
    assert not present[-1]
    switches = sum(a != b for a, b in itertools.pairwise(present))
    assert switches == 1, present
    # While the face is there, it is one track.
    assert {f.faces[0].face_id for f in face_noface_frames if f} == {0}
    stamps = np.array([f.timestamp for f in face_noface_frames])
    assert np.all(np.diff(stamps) > 0)


@pytest.mark.shared
def test_video_csv_columns_and_rows_with_faces(
    wolfgang_every8: list[FramePrediction], tmp_path: Path
) -> None:
    out = tmp_path / "faces.csv"
    assert write_video_csv(wolfgang_every8, out) == len(wolfgang_every8)
    with open(out, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    assert header == ["frame", "timestamp", *table_columns()] == video_table_columns()
    assert header[:6] == ["frame", "timestamp", "source", "face_id", "success", "confidence"]
    first = dict(zip(header, rows[0], strict=True))
    face = wolfgang_every8[0].faces[0]
    assert (first["frame"], first["success"], first["face_id"]) == ("0", "1", "0")
    assert float(first["valence"]) == pytest.approx(face.va.valence, abs=1e-6)  # type: ignore[union-attr]
    assert float(first["x2"]) == pytest.approx(face.box[2], abs=1e-5)  # type: ignore[index]
    expr = [float(first[f"expr_{n}"]) for n in EXPRESSIONS]
    assert sum(expr) == pytest.approx(1.0, abs=1e-5)
    assert first["expression"] == face.expression.label  # type: ignore[union-attr]
    for name in ACTION_UNITS:
        stem = f"AU{int(name[2:]):02d}"
        p = float(first[f"{stem}_p"])
        assert first[f"{stem}_c"] == str(int(p >= 0.5))


@pytest.mark.shared
def test_abaw2_files_repeat_the_last_prediction_on_no_face_frames(
    face_noface_frames: list[FramePrediction], tmp_path: Path
) -> None:
    frames = face_noface_frames
    paths = write_abaw2(frames, tmp_path, "face_noface", num_frames=169)
    assert set(paths) == {"va", "expression", "au"}
    assert paths["va"] == tmp_path / "VA_Set" / "face_noface.txt"
    last_face = max(f.index for f in frames if f)
    face = frames[[f.index for f in frames].index(last_face)].faces[0]
    for task, path in paths.items():
        lines = path.read_text().splitlines()
        assert lines[0] == ABAW2_HEADERS[task]
        assert len(lines) == 1 + 169  # one line per video frame, skipped ones included
        body = lines[1:]
        # Every frame after the face left (and frames skipped by every_n) repeat its last line.
        assert set(body[last_face:]) == {body[last_face]}
    va = paths["va"].read_text().splitlines()[1 + last_face].split(",")
    assert [float(x) for x in va] == pytest.approx(face.va.as_tuple(), abs=1e-6)  # type: ignore[union-attr]
    expr = paths["expression"].read_text().splitlines()[1 + last_face]
    assert int(expr) == EXPRESSIONS.index(face.expression.label)  # type: ignore[union-attr]
    au = paths["au"].read_text().splitlines()[1 + last_face].split(",")
    assert au == ["1" if n in face.aus.active else "0" for n in ACTION_UNITS]  # type: ignore[union-attr]


@pytest.mark.shared
def test_annotated_video_reads_back_with_the_same_frame_count(
    model: AffectFPN, samples_dir: Path, yunet_path: Path, tmp_path: Path
) -> None:
    stream = predict_video(
        model, samples_dir / WOLFGANG, end=12, detector=str(yunet_path), return_frames=True
    )
    boxes: list[tuple[float, ...]] = []

    def keep_boxes() -> Iterator[tuple[FramePrediction, np.ndarray]]:
        for frame, rgb in stream:
            boxes.append(tuple(frame.faces[0].box) if frame.faces else ())
            yield frame, rgb

    out = tmp_path / "annotated.mp4"
    assert write_annotated_video(keep_boxes(), out, fps=stream.info.fps or 24.0) == 12
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == 12
    assert frames[0].shape == (360, 640, 3)
    # The face's box was drawn: its outline changed, which re-encoding alone does not do
    # (a mean difference would: 2.7 grey levels with nothing drawn).
    source = cv2.VideoCapture(str(samples_dir / WOLFGANG))
    _, original = source.read()
    assert boxes[0], "a face in the first frame"
    assert outline_changed(frames[0], original, boxes[0]) > 0.8


# --------------------------------------------------------------------------- frame selection


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_synthetic(tmp_path_factory.mktemp("video") / "synthetic.avi", 40)


def _crop_run(model: AffectFPN, source: object, **options: object) -> list[tuple[int, int]]:
    """(index, index drawn in the decoded image) of each processed frame, crop mode."""
    stream = predict_video(model, source, faces="crop", return_frames=True, **options)  # type: ignore[call-overload]
    return [(frame.index, _decode_pattern(rgb)) for frame, rgb in stream]


def test_every_n_start_end_pick_the_right_frames(model: AffectFPN, synthetic: Path) -> None:
    assert _crop_run(model, synthetic, every_n=3) == [(i, i) for i in range(0, 40, 3)]
    assert _crop_run(model, synthetic, start=10, end=17) == [(i, i) for i in range(10, 17)]
    assert _crop_run(model, synthetic, start=5, end=30, every_n=10) == [(5, 5), (15, 15), (25, 25)]
    assert _crop_run(model, synthetic, start=38, end=100) == [(38, 38), (39, 39)]


def test_target_fps_samples_evenly_in_time(model: AffectFPN, synthetic: Path) -> None:
    # 20 fps video, 5 fps wanted: one frame in four.
    assert _crop_run(model, synthetic, target_fps=5.0) == [(i, i) for i in range(0, 40, 4)]
    # Faster than the video: every frame.
    assert [i for i, _ in _crop_run(model, synthetic, target_fps=50.0)] == list(range(40))
    # 7 fps: the first frame at or after each multiple of 1/7 s, so the mean rate is exact.
    picked = [i for i, _ in _crop_run(model, synthetic, target_fps=7.0)]
    assert picked == [math.ceil(k * SYN_FPS / 7 - 1e-9) for k in range(14)]
    assert len(picked) == math.ceil(40 / SYN_FPS * 7)


def test_invalid_selection_raises_config_error(model: AffectFPN, synthetic: Path) -> None:
    # Each invalid option, with the message naming it (an error raised for another reason fails).
    for options, message in (
        ({"every_n": 0}, r"every_n must be an integer >= 1, got 0"),
        ({"every_n": 2, "target_fps": 5.0}, r"every_n=2 and target_fps=5\.0 both pick frames"),
        ({"target_fps": -1.0}, r"target_fps must be a number > 0, got -1\.0"),
        ({"start": 5, "end": 5}, r"end=5 must be greater than start=5"),
        ({"start": 1.5}, r"start=1\.5 must be a frame index"),
        ({"smoothing": "gaussian"}, r"smoothing='gaussian' is not valid"),
        ({"window": 4, "smoothing": "centered"}, r"window must be an odd integer >= 1.*got 4"),
        ({"alpha": 0.0, "smoothing": "ema"}, r"alpha must be in \(0, 1\].*got 0\.0"),
    ):
        with pytest.raises(ConfigError, match=message):
            predict_video(model, synthetic, faces="crop", **options)  # type: ignore[call-overload]


def test_missing_or_unreadable_video_raises_input_error(model: AffectFPN, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such video file"):
        predict_video(model, tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match=r"junk\.mp4"):
        list(predict_video(model, junk, faces="crop"))
    with pytest.raises(InputError, match="VideoCapture"):
        predict_video(model, 12345)  # type: ignore[call-overload]


def test_open_capture_source_works_and_is_left_open(model: AffectFPN, synthetic: Path) -> None:
    from_path = list(predict_video(model, synthetic, faces="crop", end=8))
    capture = cv2.VideoCapture(str(synthetic))
    from_capture = list(predict_video(model, capture, faces="crop", end=8))
    assert from_capture == [replace(f, source=f"<capture>#frame={f.index}") for f in from_path]
    assert capture.isOpened()
    # A capture already advanced keeps its numbering: the next frame is frame 8.
    rest = _crop_run(model, capture, end=12)
    assert rest == [(8, 8), (9, 9), (10, 10), (11, 11)]
    capture.release()


class _LiveCamera:
    """A capture that, like some cameras and streams, knows no fps, frame count or times."""

    def __init__(self, path: Path) -> None:
        self.capture = cv2.VideoCapture(str(path))

    def grab(self) -> bool:
        return bool(self.capture.grab())

    def retrieve(self) -> tuple[bool, np.ndarray]:
        return self.capture.retrieve()  # type: ignore[no-any-return]

    def isOpened(self) -> bool:  # OpenCV's name
        return bool(self.capture.isOpened())

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return 0.0
        if prop in (cv2.CAP_PROP_FPS, cv2.CAP_PROP_FRAME_COUNT):
            return 0.0
        return float(self.capture.get(prop))


def test_live_source_without_fps_count_or_times(model: AffectFPN, synthetic: Path) -> None:
    stream = predict_video(model, _LiveCamera(synthetic), faces="crop", end=6)
    assert stream.info.fps is None
    assert stream.info.frame_count is None
    frames = list(stream)
    assert [f.index for f in frames] == list(range(6))
    stamps = [f.timestamp for f in frames]
    assert stamps[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(stamps))  # wall clock, still increasing


def test_predictor_source_and_clashing_options(model: AffectFPN, synthetic: Path) -> None:
    predictor = Predictor(model, faces="crop", batch_size=4)
    frames = list(predict_video(predictor, synthetic, end=6))
    assert [len(f) for f in frames] == [1] * 6
    direct = list(predict_video(model, synthetic, faces="crop", end=6))
    assert [f.index for f in frames] == [f.index for f in direct]
    np.testing.assert_allclose(_valences(frames), _valences(direct), atol=1e-5)  # batch sizes
    with pytest.raises(ConfigError, match="batch_size"):
        predict_video(predictor, synthetic, batch_size=8)
    # A Predictor expecting BGR arrays gets OpenCV's frames as they are: same predictions.
    bgr = list(
        predict_video(Predictor(model, faces="crop", bgr=True, batch_size=4), synthetic, end=6)
    )
    np.testing.assert_allclose(_valences(bgr), _valences(frames), atol=1e-6)


def test_stream_can_stop_early_and_releases_the_video(model: AffectFPN, synthetic: Path) -> None:
    with predict_video(model, synthetic, faces="crop", batch_size=2) as stream:
        assert stream.info.frame_count == 40
        assert stream.info.fps == pytest.approx(SYN_FPS)
        assert (stream.info.width, stream.info.height) == (SYN_SIZE, SYN_SIZE)
        first = next(stream)
        assert first.index == 0
    assert stream.frames_read < 40  # streamed: not read to the end
    with pytest.raises(StopIteration):
        next(stream)


# --------------------------------------------------------------------------- smoothing


def _noisy_frames(n: int, seed: int = 0) -> list[FramePrediction]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        faces = []
        for track in (0, 3):
            v, a = np.clip(rng.normal(0.2 * track - 0.1, 0.3, 2), -1, 1)
            faces.append(_face(track, (float(v), float(a)), rng.random(7) + 0.01))
        if i % 7 == 3:  # track 3 is missing now and then
            faces = faces[:1]
        frames.append(_frame(i, tuple(faces)))
    return frames


def test_ema_is_causal_and_reduces_variance() -> None:
    frames = _noisy_frames(60)
    smoothed = list(smooth_frames(frames, "ema", alpha=0.3))
    assert [f.index for f in smoothed] == [f.index for f in frames]
    # Causal: changing the frames after t leaves outputs up to t unchanged.
    changed = frames[:30] + _noisy_frames(60, seed=1)[30:]
    again = list(smooth_frames(changed, "ema", alpha=0.3))
    assert again[:30] == smoothed[:30]
    assert again[30:] != smoothed[30:]
    for track in (0, 3):
        raw, smooth = _valences(frames, track), _valences(smoothed, track)
        assert smooth.var() < 0.5 * raw.var()
    # Exact recurrence on one track, and probabilities stay distributions.
    raw0 = _valences(frames, 0)
    expected = [raw0[0]]
    for x in raw0[1:]:
        expected.append(0.3 * x + 0.7 * expected[-1])
    np.testing.assert_allclose(_valences(smoothed, 0), expected, atol=1e-9)
    for frame in smoothed:
        for face in frame:
            assert sum(face.expression.probabilities.values()) == pytest.approx(1.0)  # type: ignore[union-attr]
            assert face.expression.label == max(  # type: ignore[union-attr]
                face.expression.probabilities,  # type: ignore[union-attr]
                key=face.expression.probabilities.get,  # type: ignore[union-attr]
            )


def test_centered_window_is_the_mean_and_streams_with_bounded_lookahead() -> None:
    frames = _noisy_frames(25)
    consumed = 0

    def source() -> Iterator[FramePrediction]:
        nonlocal consumed
        for frame in frames:
            consumed += 1
            yield frame

    smoothed = smooth_frames(source(), "centered", window=5)
    first = next(smoothed)
    assert first.index == 0
    assert consumed == 3  # frame 0 needs frames 1 and 2 ahead, no more
    out = [first, *smoothed]
    assert len(out) == 25
    raw = _valences(frames, 0)  # track 0 is in every frame
    expected = [raw[max(0, t - 2) : t + 3].mean() for t in range(25)]
    np.testing.assert_allclose(_valences(out, 0), expected, atol=1e-9)
    # Track 3 is averaged over the window's frames where it is present only.
    t = 10  # frame 10 is missing track 3
    assert not any(f.face_id == 3 for f in frames[t])
    values = [f.va.valence for fr in frames[9:14] for f in fr if f.face_id == 3]  # type: ignore[union-attr]
    got = [f.va.valence for f in out[11] if f.face_id == 3]  # type: ignore[union-attr]
    assert got == pytest.approx([np.mean(values)])


def test_predict_video_smoothing_equals_smoothing_its_output(
    model: AffectFPN, synthetic: Path
) -> None:
    raw = list(predict_video(model, synthetic, faces="crop", end=20))
    ema = list(predict_video(model, synthetic, faces="crop", end=20, smoothing="ema", alpha=0.5))
    assert ema == list(smooth_frames(raw, "ema", alpha=0.5))
    assert ema != raw
    centered = predict_video(
        model, synthetic, faces="crop", end=20, smoothing="centered", return_frames=True
    )
    # Images travel with their frames through the lookahead buffer.
    assert all(frame.index == _decode_pattern(rgb) for frame, rgb in centered)


# --------------------------------------------------------------------------- tracker


def test_tracker_keeps_ids_while_faces_move_a_little() -> None:
    tracker = FaceTracker(iou_threshold=0.3, max_missed=2)
    a, b = (0.0, 0.0, 10.0, 10.0), (50.0, 50.0, 70.0, 70.0)
    assert tracker.update([a, b]) == [0, 1]
    assert tracker.update([(52.0, 51.0, 72.0, 71.0), (1.0, 0.0, 11.0, 10.0)]) == [1, 0]
    assert tracker.update([(2.0, 1.0, 12.0, 11.0)]) == [0]  # face 1 missed once
    assert tracker.update([(54.0, 52.0, 74.0, 72.0), (2.0, 1.0, 12.0, 11.0)]) == [1, 0]
    assert tracker.active_ids == (0, 1)


def test_tracker_gives_a_new_id_after_more_than_max_missed_frames() -> None:
    box = (100.0, 100.0, 150.0, 160.0)
    tracker = FaceTracker(max_missed=3)
    assert tracker.update([box]) == [0]
    for _ in range(3):
        assert tracker.update([]) == []
    assert tracker.update([box]) == [0]  # missed exactly max_missed frames: same track
    for _ in range(4):
        tracker.update([])
    assert tracker.active_ids == ()
    assert tracker.update([box]) == [1]  # gone too long: new id, old ones never reused


def test_tracker_two_overlapping_candidates_go_to_the_best_match() -> None:
    tracker = FaceTracker(iou_threshold=0.1)
    assert tracker.update([(0.0, 0.0, 20.0, 20.0), (15.0, 0.0, 35.0, 20.0)]) == [0, 1]
    # Both new boxes overlap both tracks; greedy matching by IoU keeps them apart.
    assert tracker.update([(16.0, 0.0, 36.0, 20.0), (1.0, 0.0, 21.0, 20.0)]) == [1, 0]
    with pytest.raises(ConfigError, match=r"track_iou must be in \(0, 1\], got 0\.0"):
        FaceTracker(iou_threshold=0.0)
    with pytest.raises(ConfigError, match=r"max_missed must be an integer >= 0, got -1"):
        FaceTracker(max_missed=-1)


def test_tracker_iou_gate_is_exact_and_empty_boxes_match_nothing() -> None:
    # IoU of (0, 0, 10, 10) and (5, 0, 15, 10) is 50 / 150 = 1/3
    tracker = FaceTracker(iou_threshold=1 / 3)
    assert tracker.update([(0.0, 0.0, 10.0, 10.0)]) == [0]
    assert tracker.update([(5.0, 0.0, 15.0, 10.0)]) == [0]  # at the gate: continues
    stricter = FaceTracker(iou_threshold=0.34)
    assert stricter.update([(0.0, 0.0, 10.0, 10.0)]) == [0]
    assert stricter.update([(5.0, 0.0, 15.0, 10.0)]) == [1]  # below it: a new track
    empty = FaceTracker()
    assert empty.update([(3.0, 3.0, 3.0, 3.0)]) == [0]
    assert empty.update([(3.0, 3.0, 3.0, 3.0), (0.0, 0.0, 4.0, 4.0)]) == [1, 2]


def test_tracker_landmarks_break_ties_between_equal_boxes() -> None:
    left = ((10.0, 10.0), (20.0, 10.0), (15.0, 15.0), (11.0, 20.0), (19.0, 20.0))
    right = tuple((x + 8.0, y) for x, y in left)
    box = (0.0, 0.0, 40.0, 40.0)
    tracker = FaceTracker(landmark_weight=1.0)
    assert tracker.update([box, (4.0, 0.0, 44.0, 40.0)], [left, right]) == [0, 1]
    # The same two boxes, swapped in order, and equally overlapping: landmarks decide.
    assert tracker.update([(2.0, 0.0, 42.0, 40.0), (2.0, 0.0, 42.0, 40.0)], [right, left]) == [
        1,
        0,
    ]


# --------------------------------------------------------------------------- outputs (synthetic)


def test_abaw2_defaults_before_the_first_face_and_largest_face_wins(tmp_path: Path) -> None:
    small = _face(0, (0.5, 0.5))
    large = FacePrediction(
        face_id=1,
        box=(0.0, 0.0, 200.0, 200.0),
        score=0.5,
        va=ValenceArousal(-0.25, 0.75),
        expression=Expression.from_probabilities(np.eye(7)[5] * 0.9 + 0.1 / 7, EXPRESSIONS),
        aus=ActionUnits.from_probabilities(np.linspace(0, 1, 12), ACTION_UNITS),
    )
    assert main_face((small, large)) is large
    frames = [_frame(2, (small, large)), _frame(3), _frame(6, (small,))]
    paths = write_abaw2(frames, tmp_path, "clip", precision=3)
    va = paths["va"].read_text().splitlines()
    assert va == [
        "valence,arousal",
        "0,0",  # frames 0 and 1: before the first face
        "0,0",
        "-0.250,0.750",  # frame 2: the larger face
        "-0.250,0.750",  # frame 3: no face, repeated
        "-0.250,0.750",  # frames 4, 5: not given, repeated
        "-0.250,0.750",
        "0.500,0.500",
    ]
    expr = paths["expression"].read_text().splitlines()
    assert expr[1:] == [
        "0",
        "0",
        "5",
        "5",
        "5",
        "5",
        str(EXPRESSIONS.index(small.expression.label)),
    ]  # type: ignore[union-attr]
    au = paths["au"].read_text().splitlines()
    assert au[1] == ",".join(["0"] * 12)
    assert au[3] == ",".join("1" if p >= 0.5 else "0" for p in np.linspace(0, 1, 12))
    with pytest.raises(InputError, match="increasing order"):
        write_abaw2([_frame(3), _frame(2)], tmp_path, "bad")


def test_analyze_video_writes_every_output_in_one_pass(
    model: AffectFPN, synthetic: Path, tmp_path: Path
) -> None:
    result = analyze_video(
        model,
        synthetic,
        faces="crop",
        every_n=2,
        csv_path=tmp_path / "t.csv",
        abaw_dir=tmp_path / "abaw",
        annotated_path=tmp_path / "a.mp4",
        plot_path=tmp_path / "va.png",
    )
    assert isinstance(result, VideoResult)
    frames = list(predict_video(model, synthetic, faces="crop", every_n=2))
    assert len(result) == len(frames) == 20
    assert list(result.frame_index) == [f.index for f in frames]
    assert result.track_ids == (0,)
    np.testing.assert_allclose(
        result.valence_arousal(0),
        [f.faces[0].va.as_tuple() for f in frames],
        atol=1e-6,  # type: ignore[union-attr]
    )
    rebuilt = list(result.frames())
    assert [f.faces[0].expression.label for f in rebuilt] == [  # type: ignore[union-attr]
        f.faces[0].expression.label
        for f in frames  # type: ignore[union-attr]
    ]
    with open(tmp_path / "t.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 20
    # ABAW2: one line per video frame (40), skipped frames included.
    assert len((tmp_path / "abaw" / "VA_Set" / "synthetic.txt").read_text().splitlines()) == 41
    assert _decoded_frame_count(tmp_path / "a.mp4") == 20
    assert (tmp_path / "va.png").stat().st_size > 1000
    assert analyze_video(model, synthetic, faces="crop", end=4, collect=False) is None


def test_plot_va_from_frames_and_from_csv(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    frames = [*_noisy_frames(30), _frame(30)]
    write_video_csv(frames, tmp_path / "f.csv")
    for source in (frames, tmp_path / "f.csv"):
        out = plot_va(source, tmp_path / "va.png")
        image = cv2.imread(str(out))
        assert image is not None
        assert image.shape[0] > 100
        out.unlink()
    assert plot_va(frames, tmp_path / "one.svg", face_id=3).read_text().startswith("<?xml")
    with pytest.raises(InputError, match="face_id 7"):
        plot_va(frames, tmp_path / "x.png", face_id=7)
    with pytest.raises(InputError, match="nothing to plot"):
        plot_va([_frame(0)], tmp_path / "x.png")


def test_frame_prediction_is_an_image_prediction_with_round_trip() -> None:
    frame = _frame(7, (_face(0, (0.1, -0.2)), _face(2, (0.3, 0.4))))
    assert len(frame) == 2
    assert frame[1].face_id == 2
    assert FramePrediction.from_dict(frame.to_dict()) == frame
    with pytest.raises(InputError):
        FramePrediction(source="v", width=10, height=10, index=-1, timestamp=0.0)
    with pytest.raises(InputError):
        FramePrediction(source="v", width=10, height=10, index=0, timestamp=float("nan"))


# --------------------------------------------------------------------------- memory


def _peak_while_streaming(model: AffectFPN, path: Path, keep: bool) -> int:
    """tracemalloc's peak while streaming ``path`` (crop mode), optionally keeping the frames.

    Two bounded interpreter caches would otherwise show up as slow growth: the free lists of
    small objects (cleared by a full garbage collection) and the type attribute cache, which
    keeps the last attribute name looked up in each of its 4096 slots (names built per call by
    PIL and torch fill it). Both are cleared every few frames; ``gc.freeze()`` makes those
    collections cheap by leaving the objects that existed before the run aside.
    """
    gc.collect()
    gc.freeze()
    sys._clear_type_cache()
    kept: list[FramePrediction] = []
    tracemalloc.start()
    try:
        for i, frame in enumerate(predict_video(model, path, faces="crop", batch_size=8)):
            assert len(frame) == 1
            if keep:
                kept.append(frame)
            if i % 5 == 4:
                gc.collect()
                sys._clear_type_cache()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.unfreeze()


@pytest.mark.slow  # two long synthetic videos, measured with tracemalloc: ~9 s
def test_memory_does_not_grow_with_video_length(model: AffectFPN, tmp_path: Path) -> None:
    n = 15
    short = _write_synthetic(tmp_path / "short.avi", n)
    long = _write_synthetic(tmp_path / "long.avi", 16 * n)
    list(predict_video(model, short, faces="crop", end=3))  # warm-up: lazy imports, caches
    # A peak is a maximum, so a stray allocation can inflate one run: take the lower of two.
    # Anything kept per frame would show in both.
    peak_short = min(_peak_while_streaming(model, short, keep=False) for _ in range(2))
    peak_long = min(_peak_while_streaming(model, long, keep=False) for _ in range(2))
    # Control: keeping every frame's prediction (about 2.5 kB each) on the long video is what
    # "growing with length" looks like; it must be clearly measurable ...
    peak_kept = _peak_while_streaming(model, long, keep=True)
    growth = peak_kept - peak_short
    assert growth > 300_000, (peak_short, peak_kept)
    # ... and streaming must stay far below it: under a third of that growth (peaks of identical
    # runs vary by up to ~100 kB from transient buffers; keeping the frames adds over 500 kB).
    assert peak_long - peak_short < growth / 3, (peak_short, peak_long, peak_kept)


# --------------------------------------------------------------------------- two moving faces
TWO_FACES_N = 24


def _two_face_video(samples_dir: Path, path: Path) -> Path:
    """Two faces from the sample photos on a grey 480x320 background, 10 fps: face A (happy,
    150 px) moves right 4 px a frame; face B (surprised) grows from 100 to 192 px, its right edge
    fixed, so it becomes the larger face partway through. Their crops never overlap."""
    happy = cv2.imread(str(samples_dir / "0-f15-hao-ph.jpg"))
    surprised = cv2.imread(str(samples_dir / "0-f1-su-ph.jpg"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (480, 320))
    assert writer.isOpened()
    for i in range(TWO_FACES_N):
        frame = np.full((320, 480, 3), 128, np.uint8)
        x = 20 + 4 * i
        frame[40 : 40 + 150, x : x + 150] = cv2.resize(
            happy, (150, 150), interpolation=cv2.INTER_AREA
        )
        size = 100 + 4 * i
        frame[60 : 60 + size, 460 - size : 460] = cv2.resize(
            surprised, (size, size), interpolation=cv2.INTER_AREA
        )
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.shared
def test_two_moving_faces_keep_their_track_ids_and_the_main_face_is_the_larger(
    model: AffectFPN, samples_dir: Path, yunet_path: Path, tmp_path: Path
) -> None:
    video = _two_face_video(samples_dir, tmp_path / "two_faces.avi")
    frames = list(predict_video(model, video, detector=str(yunet_path)))
    assert [f.index for f in frames] == list(range(TWO_FACES_N))
    assert all(len(f.faces) == 2 for f in frames), [len(f.faces) for f in frames]
    # Each person keeps one id for the whole video: A is the face on the left, B on the right.
    a_ids = {min(f.faces, key=lambda face: face.box[0]).face_id for f in frames}
    b_ids = {max(f.faces, key=lambda face: face.box[0]).face_id for f in frames}
    assert len(a_ids) == len(b_ids) == 1
    (a_id,), (b_id,) = a_ids, b_ids
    assert a_id != b_id
    a_boxes = [next(face.box for face in f.faces if face.face_id == a_id) for f in frames]
    b_boxes = [next(face.box for face in f.faces if face.face_id == b_id) for f in frames]
    # the boxes follow the motion: A moves 4 px a frame to the right, B grows
    a_moves = np.diff([box[0] for box in a_boxes])
    assert 3.0 < a_moves.mean() < 5.0
    b_widths = [box[2] - box[0] for box in b_boxes]
    assert b_widths[-1] > 1.6 * b_widths[0]

    def area(box: tuple[float, float, float, float]) -> float:
        return (box[2] - box[0]) * (box[3] - box[1])

    # The main face is the larger one: A at first, B once it has grown past A, one switch.
    main_ids = [main_face(f.faces).face_id for f in frames]  # type: ignore[union-attr]
    expected = [a_id if area(a) > area(b) else b_id for a, b in zip(a_boxes, b_boxes, strict=True)]
    assert main_ids == expected
    switch = main_ids.index(b_id)
    assert 4 <= switch <= TWO_FACES_N - 4, main_ids
    assert main_ids == [a_id] * switch + [b_id] * (TWO_FACES_N - switch)
    # The collected result and the ABAW2 file pick the same face per frame.
    result = analyze_video(
        model, video, detector=str(yunet_path), abaw_dir=tmp_path / "abaw", video_name="two"
    )
    assert result is not None
    main_va = result.valence_arousal()
    for i, face_id in enumerate(main_ids):
        np.testing.assert_array_equal(main_va[i], result.valence_arousal(face_id)[i])
    lines = (tmp_path / "abaw" / "VA_Set" / "two.txt").read_text().splitlines()[1:]
    assert len(lines) == TWO_FACES_N
    for line, frame in zip(lines, frames, strict=True):
        face = main_face(frame.faces)
        assert face is not None
        assert face.va is not None
        assert [float(v) for v in line.split(",")] == pytest.approx(face.va.as_tuple(), abs=1e-6)


class _StallingClock:
    """A capture at 25 fps whose container clock runs for five frames and then stalls (as some
    streams and damaged files do): the reader must fall back to index / fps from there."""

    def __init__(self, frames: int = 9) -> None:
        self.frames = frames
        self.position = -1

    def grab(self) -> bool:
        self.position += 1
        return self.position < self.frames

    def retrieve(self) -> tuple[bool, np.ndarray]:
        return True, np.full((24, 32, 3), 40 * (self.position % 5), np.uint8)

    def isOpened(self) -> bool:  # OpenCV's name
        return True

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return 40.0 * min(self.position, 4)  # 0, 40, 80, 120, 160, 160, 160, ...
        if prop == cv2.CAP_PROP_FPS:
            return 25.0
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(self.frames)
        return 0.0


def test_timestamps_fall_back_to_index_over_fps_when_the_clock_stalls() -> None:
    from affectfpn.video.reader import VideoReader

    stamps = [frame.timestamp for frame in VideoReader(_StallingClock())]
    # the container's times while they increase, then frame index / fps: frame 5 is at 0.2 s
    assert stamps == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28, 0.32])


@pytest.mark.parametrize("tasks", [("expression", "au"), ("va", "expression", "au"), ("va",)])
def test_the_timeline_plot_works_for_every_model(
    synthetic: Path, tmp_path: Path, tasks: tuple[str, ...]
) -> None:
    """--plot / plot_timeline draws whatever the model predicts: the shipped models have no
    valence/arousal, and the help's own example must still run."""
    pytest.importorskip("matplotlib")
    from affectfpn import AffectFPNConfig
    from affectfpn.video import plot_timeline

    torch.manual_seed(0)
    config = AffectFPNConfig(fpn_width=8, input_size=(32, 32), tasks=tasks)
    result = analyze_video(AffectFPN(config), synthetic, faces="crop", end=6)
    out = plot_timeline(result, tmp_path / "timeline.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="face_id 9"):
        plot_timeline(result, tmp_path / "x.png", face_id=9)


def test_video_plot_option_with_the_default_model(synthetic: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from affectfpn.cli import main as cli_main

    out = tmp_path / "timeline.png"
    code = cli_main(["video", str(synthetic), "--faces", "crop", "--end", "6", "--plot", str(out)])
    assert code == 0
    assert out.is_file()
    assert out.stat().st_size > 1000


@pytest.mark.shared
def test_a_failed_annotation_run_reports_its_error_not_an_empty_video(
    model: AffectFPN,
    samples_dir: Path,
    yunet_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import affectfpn.video.writers as writers

    def broken_add(self: object, frame: object, rgb: object) -> None:
        raise OSError("disk full while drawing")

    monkeypatch.setattr(writers.VideoSink, "add", broken_add)
    with pytest.raises(OSError, match="disk full"):
        analyze_video(
            model,
            samples_dir / WOLFGANG,
            end=2,
            detector=str(yunet_path),
            annotated_path=tmp_path / "out.mp4",
        )
    assert "no frame to write" not in caplog.text
    # An empty video that did not fail still says so.
    caplog.clear()
    sink = writers.VideoSink(tmp_path / "empty.mp4", 24.0, codec="mp4v")
    sink.close()
    assert "no frame to write" in caplog.text
