"""Face crops from a user's photos (affectfpn crops): cut as predict cuts them, so a crop
predicted as a crop gives what predict gives that face in the photo; folders keep their layout,
a label CSV keeps its labels, photos without a face are listed."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectfpn import AffectFPN
from affectfpn.cli import main as cli_main
from affectfpn.data import LabelCSV
from affectfpn.errors import ConfigError, InputError
from affectfpn.inference import Predictor
from affectfpn.recipes.crops import NO_FACE_FILE, crop_faces
from affectfpn.recipes.stage import check_data

ROOT = Path(__file__).resolve().parents[1]
SINGLE = ROOT / "examples" / "images" / "single_face.jpg"
MULTI = ROOT / "examples" / "images" / "multi_face.jpg"


@pytest.fixture(scope="module")
def model() -> AffectFPN:
    return AffectFPN.from_pretrained().eval()


def _photos(folder: Path) -> Path:
    """train/happy/single_face.jpg, train/neutral/multi_face.jpg and a grey photo with no
    face, train/neutral/blank.png."""
    (folder / "train" / "happy").mkdir(parents=True)
    (folder / "train" / "neutral").mkdir(parents=True)
    shutil.copy(SINGLE, folder / "train" / "happy")
    shutil.copy(MULTI, folder / "train" / "neutral")
    Image.new("RGB", (120, 90), (128, 128, 128)).save(folder / "train" / "neutral" / "blank.png")
    return folder


def _probabilities(face: object) -> np.ndarray:
    expression = face.expression  # type: ignore[attr-defined]
    return np.array(list(expression.probabilities.values()))


def _by_area(faces: tuple[object, ...]) -> list[object]:
    def area(face: object) -> float:
        x1, y1, x2, y2 = face.box  # type: ignore[attr-defined]
        return (x2 - x1) * (y2 - y1)

    return sorted(faces, key=lambda f: -area(f))


def test_a_crop_predicted_as_a_crop_is_the_face_predict_sees(
    tmp_path: Path, model: AffectFPN
) -> None:
    photos = _photos(tmp_path / "photos")
    report = crop_faces(photos, tmp_path / "crops", model=model)
    assert (report.photos, report.written) == (3, 2)
    assert report.no_face == ["train/neutral/blank.png"]
    assert (tmp_path / "crops" / NO_FACE_FILE).read_text().split() == ["train/neutral/blank.png"]
    crops = tmp_path / "crops"
    written = sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*.png"))
    assert written == ["train/happy/single_face.png", "train/neutral/multi_face.png"]
    for photo, crop in (
        (SINGLE, tmp_path / "crops" / "train" / "happy" / "single_face.png"),
        (MULTI, tmp_path / "crops" / "train" / "neutral" / "multi_face.png"),
    ):
        assert Image.open(crop).size == model.config.input_size[::-1]
        largest = _by_area(model.predict(photo).faces)[0]
        as_crop = model.predict(crop, faces="crop").faces[0]
        np.testing.assert_allclose(_probabilities(as_crop), _probabilities(largest), atol=1e-6)
    # the folder is fine-tuning data as it stands: class folders of faces
    spec = {"type": "imagefolder", "root": str(crops / "train")}
    lines = check_data({"train": [spec]}, source="t")
    assert lines == ["train: imagefolder with 2 samples; labels: expression 2"]


def test_all_faces_gives_a_crop_per_face_largest_first(tmp_path: Path, model: AffectFPN) -> None:
    photos = _photos(tmp_path / "photos")
    report = crop_faces(photos, tmp_path / "crops", model=model, faces="all")
    faces = _by_area(model.predict(MULTI).faces)
    assert len(faces) == 5
    assert report.written == 1 + 5
    for n, face in enumerate(faces, start=1):
        crop = tmp_path / "crops" / "train" / "neutral" / f"multi_face-{n}.png"
        as_crop = model.predict(crop, faces="crop").faces[0]
        np.testing.assert_allclose(_probabilities(as_crop), _probabilities(face), atol=1e-6)


def test_a_label_csv_gives_crops_and_a_csv_that_keeps_its_labels(
    tmp_path: Path, model: AffectFPN
) -> None:
    photos = _photos(tmp_path / "photos")
    table = photos / "labels.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "expression", "AU4", "note"])
        writer.writerow(["train/happy/single_face.jpg", "happy", "0", "a"])
        writer.writerow(["train/neutral/blank.png", "neutral", "1", "b"])
        writer.writerow(["train/neutral/multi_face.jpg", "neutral", "1", "c"])
    report = crop_faces(table, tmp_path / "faces", model=model)
    assert report.table == tmp_path / "faces" / "labels.csv"
    rows = list(csv.DictReader(report.table.open()))
    assert rows == [
        {"path": "train/happy/single_face.png", "expression": "happy", "AU4": "0", "note": "a"},
        {"path": "train/neutral/multi_face.png", "expression": "neutral", "AU4": "1", "note": "c"},
    ]
    dataset = LabelCSV(report.table)
    assert len(dataset) == 2
    assert dataset.label_arrays().expression_mask.all()
    with pytest.raises(ConfigError, match="one label per photo"):
        crop_faces(table, tmp_path / "all", model=model, faces="all")


def test_bad_sources_and_outputs_are_named(tmp_path: Path, model: AffectFPN) -> None:
    photos = _photos(tmp_path / "photos")
    with pytest.raises(ConfigError, match="inside"):
        crop_faces(photos, photos / "crops", model=model)
    with pytest.raises(InputError, match="does not exist"):
        crop_faces(tmp_path / "missing", tmp_path / "out", model=model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image"):
        crop_faces(tmp_path / "empty", tmp_path / "out", model=model)
    (tmp_path / "nopath.csv").write_text("file,expression\na.jpg,happy\n")
    with pytest.raises(InputError, match="no 'path' column"):
        crop_faces(tmp_path / "nopath.csv", tmp_path / "out", model=model)
    with pytest.raises(ConfigError, match="the CSV's own folder"):  # it would replace the CSV
        crop_faces(tmp_path / "nopath.csv", tmp_path, model=model)
    with pytest.raises(ConfigError, match="faces must be"):
        crop_faces(photos, tmp_path / "out", model=model, faces="biggest")
    shutil.copy(SINGLE, photos / "train" / "happy" / "single_face.png")  # beside .jpg
    with pytest.raises(InputError, match="would both be cropped to"):
        crop_faces(photos, tmp_path / "out", model=model)


def test_an_unreadable_photo_is_reported_and_the_rest_are_cropped(
    tmp_path: Path, model: AffectFPN
) -> None:
    photos = _photos(tmp_path / "photos")
    (photos / "train" / "happy" / "broken.jpg").write_bytes(b"not a jpeg")
    report = crop_faces(photos, tmp_path / "crops", model=model)
    assert report.written == 2
    assert [Path(p).name for p, _ in report.failed] == ["broken.jpg"]
    predictor = Predictor(model, on_error="raise")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        list(predictor.face_crops(photos / "train" / "happy" / "broken.jpg"))


def test_crops_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = _photos(tmp_path / "photos")
    assert cli_main(["crops", str(photos), "--out", str(tmp_path / "crops")]) == 0
    out = capsys.readouterr().out
    assert "3 photos, 2 face crops written" in out
    assert "1 without a face" in out
    assert (tmp_path / "crops" / "train" / "happy" / "single_face.png").is_file()
    assert cli_main(["crops", str(photos), "--out", str(photos / "x")]) != 0
    assert "inside" in capsys.readouterr().err
