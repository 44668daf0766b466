"""DataFrames and Parquet: the CSV's table as pandas (images and video), ``-o out.parquet``,
and a clear error where pandas is missing."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from affectfpn import AffectFPN, MissingExtraError
from affectfpn.cli import main as cli_main
from affectfpn.inference import to_pandas, write_csv

pd = pytest.importorskip("pandas")
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "images" / "multi_face.jpg"


@pytest.fixture(scope="module")
def model() -> AffectFPN:
    return AffectFPN.from_pretrained()


def test_a_dataframe_has_the_csv_columns_and_values(model: AffectFPN) -> None:
    blank = np.zeros((64, 64, 3), np.uint8)  # no face: one success-0 row
    results = model.predict([PHOTO, blank])
    table = to_pandas(results)
    buffer = io.StringIO()
    write_csv(results, buffer)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert list(table.columns) == list(rows[0])
    assert len(table) == len(rows) == 6
    assert table["face_id"].dtype == "Int64"
    assert table["success"].tolist() == [1] * 5 + [0]
    assert table["expression"].iloc[:5].tolist() == [r["expression"] for r in rows[:5]]
    np.testing.assert_allclose(
        table["expr_Happiness"].iloc[:5].to_numpy(dtype=float),
        [float(r["expr_Happiness"]) for r in rows[:5]],
        atol=1e-6,
    )
    assert table["valence"].isna().all()  # the default has no valence/arousal
    assert pd.isna(table["expression"].iloc[5])


def test_a_video_result_dataframe_starts_with_frame_and_timestamp(
    model: AffectFPN, tmp_path: Path
) -> None:
    import cv2

    from affectfpn.video import analyze_video

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    result = analyze_video(model, path, faces="crop")
    table = result.to_pandas()
    assert list(table.columns[:3]) == ["frame", "timestamp", "source"]
    assert table["frame"].tolist() == list(range(5))
    assert table["timestamp"].is_monotonic_increasing


def test_predict_writes_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "faces.parquet"
    assert cli_main(["predict", str(PHOTO), "-o", str(out), "-q"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 5
    assert "expr_Neutral" in table.columns
    assert cli_main(["predict", str(PHOTO), "--format", "parquet", "-q"]) != 0  # needs -o


def test_missing_pandas_is_a_clear_error(model: AffectFPN, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(MissingExtraError, match=r"affectfpn\[pandas\]"):
        to_pandas(model.predict(PHOTO))
