"""Annotated videos that browsers play (affectfpn.video.writers: VideoSink, video_encoding).

The codec choice and its errors are checked without a browser; the files themselves are opened
in headless Chromium, in an HTML ``<video>`` element served from a loopback HTTP server, which
reports whether each one loaded, how long it is and whether it played to its end without a
media error. That test skips where no Chromium is installed (CI installs Debian's).
"""

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from affectfpn.errors import AffectFPNError, InputError, MissingExtraError
from affectfpn.inference.results import (
    ActionUnits,
    Expression,
    FacePrediction,
    ValenceArousal,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.video import (
    VIDEO_CODECS,
    FramePrediction,
    VideoEncoding,
    video_encoding,
    write_annotated_video,
)

FPS = 15.0
FRAMES = 30  # 2 seconds
WIDTH, HEIGHT = 161, 121  # odd on purpose: yuv420p needs even sizes


def _pairs(
    frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT
) -> Iterator[tuple[FramePrediction, np.ndarray]]:
    """Frames with one moving face box drawn on a changing background."""
    probabilities = np.linspace(1.0, 2.0, len(EXPRESSIONS))
    for index in range(frames):
        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        rgb[:, :, 0] = (index * 8) % 256
        rgb[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        left = 10.0 + index
        face = FacePrediction(
            face_id=0,
            box=(left, 20.0, left + 60.0, 90.0),
            score=0.9,
            va=ValenceArousal(0.3, -0.2),
            expression=Expression.from_probabilities(
                probabilities / probabilities.sum(), EXPRESSIONS
            ),
            aus=ActionUnits.from_probabilities(np.full(len(ACTION_UNITS), 0.7), ACTION_UNITS),
        )
        frame = FramePrediction(
            source=f"clip#frame={index}",
            width=width,
            height=height,
            faces=(face,),
            index=index,
            timestamp=index / FPS,
        )
        yield frame, rgb


def _no_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import av`` fail (as without the extra)."""
    monkeypatch.setitem(sys.modules, "av", None)


# --------------------------------------------------------------------- codec choice, errors


def test_auto_picks_by_extension_and_names_the_backend() -> None:
    pytest.importorskip("av")
    assert video_encoding("out.mp4") == VideoEncoding("h264", "pyav")
    assert video_encoding("out.MOV") == VideoEncoding("h264", "pyav")
    assert video_encoding("out.webm") == VideoEncoding("vp9", "pyav")
    assert video_encoding("out.avi") == VideoEncoding("mp4v", "opencv")
    assert video_encoding("out.mp4", "VP9") == VideoEncoding("vp9", "pyav")
    assert video_encoding("out.avi", "MJPG") == VideoEncoding("MJPG", "opencv")
    assert video_encoding("out.mp4").browser_playable
    assert not video_encoding("out.mp4", "mp4v").browser_playable
    assert str(video_encoding("out.mp4")) == "H.264 via PyAV"
    assert "OpenCV" in str(video_encoding("out.mp4", "mp4v"))
    assert set(VIDEO_CODECS) == {"auto", "h264", "vp9", "mp4v"}


def test_without_pyav_auto_falls_back_to_opencv_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    _no_pyav(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="affectfpn.video.writers"):
        encoding = video_encoding(tmp_path / "out.mp4")
    assert encoding == VideoEncoding("mp4v", "opencv")
    assert "affectfpn[video]" in caplog.text
    assert "browsers do not" in caplog.text
    # The fallback writes a file OpenCV reads back.
    assert write_annotated_video(_pairs(frames=4), tmp_path / "out.mp4", FPS) == 4
    assert (tmp_path / "out.mp4").stat().st_size > 0


@pytest.mark.parametrize(
    ("name", "codec"), [("out.mp4", "h264"), ("out.webm", "vp9"), ("out.webm", "auto")]
)
def test_browser_codecs_without_pyav_name_the_extra(
    monkeypatch: pytest.MonkeyPatch, name: str, codec: str
) -> None:
    _no_pyav(monkeypatch)
    with pytest.raises(MissingExtraError, match=r"affectfpn\[video\]") as caught:
        video_encoding(name, codec)
    assert name in str(caught.value)


@pytest.mark.parametrize(
    ("name", "codec", "fragment"),
    [
        ("out.webm", "h264", "out.mp4"),  # H.264 does not go in WebM: names the fix
        ("out.avi", "vp9", "out.webm"),
        ("out", "h264", "without an extension"),
        ("out.webm", "mp4v", "vp9"),
        ("out.mp4", "x264x", "auto, h264, vp9, mp4v"),
        ("out.mp4", "", "auto, h264, vp9, mp4v"),
    ],
)
def test_codecs_that_do_not_fit_are_clear_input_errors(
    name: str, codec: str, fragment: str
) -> None:
    pytest.importorskip("av")
    with pytest.raises(InputError) as caught:
        video_encoding(name, codec)
    assert fragment in str(caught.value)


def test_a_non_string_codec_is_an_input_error() -> None:
    with pytest.raises(InputError, match="codec must be one of"):
        video_encoding("out.mp4", 264)  # type: ignore[arg-type]


# --------------------------------------------------------------------- the files themselves


@pytest.mark.parametrize(("suffix", "codec_name"), [(".mp4", "h264"), (".webm", "vp9")])
def test_pyav_files_are_yuv420p_even_sized_and_complete(
    tmp_path: Path, suffix: str, codec_name: str
) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / f"clip{suffix}"
    assert write_annotated_video(_pairs(), path, FPS) == FRAMES
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec_name
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (WIDTH + 1, HEIGHT + 1)
        decoded = sum(1 for _ in container.decode(stream))
        duration = container.duration / 1_000_000
    assert decoded == FRAMES
    assert duration == pytest.approx(FRAMES / FPS, abs=1.5 / FPS)
    if suffix == ".mp4":  # faststart: the index (moov) before the frames (mdat)
        data = path.read_bytes()
        assert 0 <= data.find(b"moov") < data.find(b"mdat")


def test_the_sink_says_which_encoder_wrote_the_file(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from affectfpn.video.writers import VideoSink

    sink = VideoSink(tmp_path / "a.webm", FPS)
    assert sink.encoding == VideoEncoding("vp9", "pyav")
    assert sink.codec == "vp9"
    fallback = VideoSink(tmp_path / "a.mp4", FPS, codec="mp4v")
    assert fallback.encoding.backend == "opencv"


def test_a_path_pyav_cannot_open_is_a_package_error(tmp_path: Path) -> None:
    pytest.importorskip("av")
    (tmp_path / "taken.mp4").mkdir()  # a folder where the file should go
    with pytest.raises(AffectFPNError, match=r"taken\.mp4: .*directory"):
        write_annotated_video(_pairs(frames=2), tmp_path / "taken.mp4", FPS)


# --------------------------------------------------------------------- headless Chromium

_PAGE = """<!doctype html>
<html><body><script>
const names = %s;
const results = {};
let left = names.length;
function finish(name, video, extra) {
  if (name in results) return;
  results[name] = Object.assign({
    duration: video.duration, currentTime: video.currentTime, width: video.videoWidth,
    height: video.videoHeight, readyState: video.readyState,
    error: video.error ? {code: video.error.code, message: video.error.message} : null,
  }, extra);
  if (--left === 0) {
    fetch("/report", {method: "POST", body: JSON.stringify(results)});
  }
}
for (const name of names) {
  const video = document.createElement("video");
  const seen = [];
  video.muted = true;
  video.preload = "auto";
  for (const event of ["loadedmetadata", "playing", "ended", "error"]) {
    video.addEventListener(event, () => {
      seen.push(event);
      if (event === "ended" || event === "error") finish(name, video, {events: seen});
    });
  }
  video.src = name;
  document.body.appendChild(video);
  video.play().catch((e) => finish(name, video, {events: seen, play: String(e)}));
  setTimeout(() => finish(name, video, {events: seen, timeout: true}), 20000);
}
</script></body></html>
"""


def _chromium() -> str | None:
    given = os.environ.get("AFFECTFPN_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Handler(SimpleHTTPRequestHandler):
    """Serves the folder; ``POST /report`` hands the page's JSON to the test."""

    reports: "queue.Queue[dict[str, Any]]"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reports.put(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def _play_in_chromium(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Open each file of ``folder`` in a ``<video>`` of headless Chromium; what it reports."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here (apt-get install chromium; or set AFFECTFPN_CHROMIUM)")
    (folder / "index.html").write_text(_PAGE % json.dumps(names), encoding="utf-8")
    reports: queue.Queue[dict[str, Any]] = queue.Queue()
    handler = type("Handler", (_Handler,), {"reports": reports})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={folder / 'profile'}",
        f"http://127.0.0.1:{server.server_address[1]}/index.html",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            return reports.get(timeout=60)
        except queue.Empty:
            process.kill()
            _, err = process.communicate(timeout=10)
            pytest.fail(
                f"Chromium reported nothing in 60 s: {err.decode(errors='replace')[-2000:]}"
            )
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
        server.shutdown()
        server.server_close()


def test_annotated_videos_play_in_headless_chromium(tmp_path: Path) -> None:
    pytest.importorskip("av")
    if _chromium() is None:
        pytest.skip("no Chromium here (apt-get install chromium; or set AFFECTFPN_CHROMIUM)")
    for name in ("h264.mp4", "vp9.webm"):
        assert write_annotated_video(_pairs(), tmp_path / name, FPS) == FRAMES
    # The control: OpenCV's MPEG-4 Part 2, which browsers refuse. It shows that the page
    # reports a file that does not play.
    assert write_annotated_video(_pairs(), tmp_path / "mp4v.mp4", FPS, codec="mp4v") == FRAMES
    results = _play_in_chromium(tmp_path, ["h264.mp4", "vp9.webm", "mp4v.mp4"])

    for name in ("h264.mp4", "vp9.webm"):
        played = results[name]
        assert played["error"] is None, (name, played)
        assert "ended" in played["events"], (name, played)
        assert played["duration"] == pytest.approx(FRAMES / FPS, abs=1.5 / FPS), (name, played)
        assert played["currentTime"] == pytest.approx(played["duration"], abs=1.5 / FPS)
        assert (played["width"], played["height"]) == (WIDTH + 1, HEIGHT + 1)
    refused = results["mp4v.mp4"]
    assert refused["error"] is not None, refused
    assert refused["error"]["code"] == 4  # MEDIA_ERR_SRC_NOT_SUPPORTED
