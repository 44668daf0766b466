"""Tests of affectfpn.recipes.datasets on tiny fake trees (and FER2013 from ../shared)."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_data import (
    AU_HEADER,
    VA_HEADER,
    FakeAffWild2,
    write_affectnet_tree,
    write_affwild2_tree,
    write_expw_tree,
    write_image,
    write_image_folder,
)
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from affectfpn.data import images as _data_images
from affectfpn.errors import DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.preprocess import face_box_region
from affectfpn.recipes.datasets import (
    AffectNet,
    AffWild2,
    AffWild2MultiTask,
    ExpW,
    ImageFolderExpressions,
    LabelCSV,
    LabelTable,
    MixedDataset,
    Sample,
    WithPseudoLabels,
    check_disjoint,
    read_path_list,
)

# Written out by hand (not taken from the module under test).
AFFECTNET_NAMES = ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger"]
EXPW_NAMES = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"]


def all_samples(dataset: Dataset[Sample]) -> list[Sample]:
    return [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]


def assert_contract(sample: Sample) -> None:
    """The sample dict of the training contract, with no invalid value behind a True mask."""
    assert sample["va"].dtype == torch.float32
    assert sample["va"].shape == (2,)
    assert sample["va_mask"].dtype == torch.bool
    assert sample["va_mask"].shape == ()
    assert sample["expression"].dtype == torch.int64
    assert sample["expression"].shape == ()
    assert sample["expression_mask"].dtype == torch.bool
    assert sample["expression_mask"].shape == ()
    assert sample["au"].dtype == torch.float32
    assert sample["au"].shape == (12,)
    assert sample["au_mask"].dtype == torch.bool
    assert sample["au_mask"].shape == (12,)
    assert isinstance(sample["key"], str)
    if sample["va_mask"]:
        assert sample["va"].abs().max() <= 1.0
    else:
        assert torch.all(sample["va"] == 0)
    if sample["expression_mask"]:
        assert 0 <= int(sample["expression"]) < 7
    else:
        assert int(sample["expression"]) == 0
    au, mask = sample["au"], sample["au_mask"]
    assert torch.all((au[mask] >= 0) & (au[mask] <= 1))
    assert torch.all(au[~mask] == 0)


@pytest.fixture
def affwild2(tmp_path: Path) -> FakeAffWild2:
    return write_affwild2_tree(tmp_path / "affwild2", seed=1)


# ---------------------------------------------------------------------------------- Aff-Wild2


def test_affwild2_va_keys_labels_and_markers(affwild2: FakeAffWild2) -> None:
    ds = AffWild2(affwild2.root, "va", "train")
    assert set(ds.keys) == affwild2.keys("va", "train")
    assert len(ds.keys) == len(set(ds.keys)) == len(ds)
    # frame 3 has no image, the extra frame 9 has no row, *_3d.jpg and notes.txt are not frames
    assert not any(k.endswith(("/00003", "/00009")) or "_3d" in k for k in ds.keys)
    n_valid = 0
    for sample in all_samples(ds):
        assert_contract(sample)
        intended = affwild2.labels["va"][sample["key"]]
        if intended is None:  # -5 markers and the out-of-range row
            assert not sample["va_mask"]
        else:
            n_valid += 1
            assert sample["va_mask"]
            assert sample["va"].tolist() == pytest.approx(intended, abs=1e-6)
        assert not sample["expression_mask"]
        assert not sample["au_mask"].any()
    assert ds.counts()["va"] == n_valid
    assert n_valid < len(ds)  # the tree does contain invalid rows
    assert sample["image"].dtype == torch.uint8
    assert sample["image"].shape == (3, 16, 16)


def test_affwild2_expression_and_au_markers(affwild2: FakeAffWild2) -> None:
    expr = AffWild2(affwild2.root, "expression", "train")
    assert set(expr.keys) == affwild2.keys("expression", "train")
    for sample in all_samples(expr):
        intended = affwild2.labels["expression"][sample["key"]]
        assert bool(sample["expression_mask"]) == (intended is not None)
        if intended is not None:
            assert int(sample["expression"]) == intended
    au = AffWild2(affwild2.root, "au", "train")
    assert set(au.keys) == affwild2.keys("au", "train")
    partial = 0
    for sample in all_samples(au):
        assert_contract(sample)
        intended = affwild2.labels["au"][sample["key"]]
        if intended is None:
            assert not sample["au_mask"].any()
            continue
        expected_mask = [v is not None for v in intended]
        partial += not all(expected_mask)
        assert sample["au_mask"].tolist() == expected_mask
        assert sample["au"].tolist() == [0.0 if v is None else float(v) for v in intended]
    assert partial > 0  # frame 4 has one -1 AU, the others valid


def test_affwild2_image_is_the_frame_file(affwild2: FakeAffWild2) -> None:
    ds = AffWild2(affwild2.root, "va", "validation", image_size=(8, 12))
    key = ds.keys[0]
    video, frame = key.split("/")
    expected = Image.open(affwild2.root / "cropped_aligned" / video / f"{frame}.jpg").convert("RGB")
    expected_t = torch.from_numpy(
        np.asarray(expected.resize((12, 8), Image.Resampling.BILINEAR)).copy()
    )
    assert torch.equal(ds[0]["image"], expected_t.permute(2, 0, 1))


def test_affwild2_every_k_and_splits_disjoint(affwild2: FakeAffWild2) -> None:
    full = AffWild2(affwild2.root, "va", "train")
    every3 = AffWild2(affwild2.root, "va", "train", every_k=3)
    frames = {int(k.split("/")[1]) for k in every3.keys}
    assert frames == {1, 4, 7}  # 1-based: 1, 1 + 3, 1 + 6 (8 rows)
    assert set(every3.keys) == {k for k in full.keys if (int(k.split("/")[1]) - 1) % 3 == 0}
    val = AffWild2(affwild2.root, "va", "validation")
    assert set(val.keys) == affwild2.keys("va", "validation")
    assert len(val) > 0
    assert not set(val.keys) & set(full.keys)
    check_disjoint(full, val, by=lambda k: k.split("/")[0])


def test_affwild2_drop_unlabelled(affwild2: FakeAffWild2) -> None:
    ds = AffWild2(affwild2.root, "va", "train", drop_unlabelled=True)
    assert bool(ds.masks()["va"].all())
    assert set(ds.keys) == {
        k for k in affwild2.keys("va", "train") if affwild2.labels["va"][k] is not None
    }


def test_affwild2_multitask_joins_by_key(affwild2: FakeAffWild2) -> None:
    ds = AffWild2MultiTask(affwild2.root, "train")
    expected = set().union(*(affwild2.keys(t, "train") for t in ("va", "expression", "au")))
    assert set(ds.keys) == expected
    samples = {s["key"]: s for s in all_samples(ds)}
    for task, mask_name in (("va", "va_mask"), ("expression", "expression_mask")):
        for key, sample in samples.items():
            intended = affwild2.labels[task].get(key)  # absent: the video has no file for it
            assert bool(sample[mask_name]) == (intended is not None), (task, key)
    # video5_left has no EXPR file; 4-30-1920x1080 no AU file; AU rows stop at frame 6
    assert not samples["video5_left/00001"]["expression_mask"]
    assert not samples["4-30-1920x1080/00001"]["au_mask"].any()
    assert samples["118-30-640x480/00007"]["va_mask"]
    assert not samples["118-30-640x480/00007"]["au_mask"].any()
    both = samples["118-30-640x480/00001"]
    assert both["va_mask"]
    assert both["expression_mask"]
    assert both["au_mask"].all()
    val = AffWild2MultiTask(affwild2.root, "validation")
    assert not set(val.keys) & set(ds.keys)
    assert {k.split("/")[0] for k in val.keys} == {"video10_1"}


def test_affwild2_train_leaves_out_videos_of_any_validation_set(tmp_path: Path) -> None:
    splits = {
        "va": {"a": "train", "b": "train", "c": "validation"},
        "expression": {"a": "train", "b": "validation"},  # b: VA train but EXPR validation
    }
    fake = write_affwild2_tree(tmp_path, videos=("a", "b", "c"), splits=splits, frames=4)
    strict = AffWild2MultiTask(fake.root, "train", tasks=("va", "expression"))
    val = AffWild2MultiTask(fake.root, "validation", tasks=("va", "expression"))
    assert {k.split("/")[0] for k in strict.keys} == {"a"}
    assert {k.split("/")[0] for k in val.keys} == {"b", "c"}
    check_disjoint(strict, val)
    assert {k.split("/")[0] for k in AffWild2(fake.root, "va", "train").keys} == {"a"}
    loose = AffWild2(fake.root, "va", "train", strict_split=False)
    assert {k.split("/")[0] for k in loose.keys} == {"a", "b"}
    with pytest.raises(DatasetError, match="share"):
        check_disjoint(loose, val)


def test_affwild2_malformed_row_and_header_name_file_and_line(tmp_path: Path) -> None:
    fake = write_affwild2_tree(tmp_path, videos=("v1",), splits={"va": {"v1": "train"}})
    ann = fake.root / "annotations" / "VA_Set" / "Train_Set" / "v1.txt"
    lines = ann.read_text().splitlines()
    lines[4] = "0.1,0.2,0.3"  # frame 4 -> line 5
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{ann}:5")):
        AffWild2(fake.root, "va", "train")
    lines[4] = "0.1,abc"
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{ann}:5")):
        AffWild2(fake.root, "va", "train")
    lines[4] = "0.1,0.2"
    lines[0] = AU_HEADER
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{ann}:1")) as err:
        AffWild2(fake.root, "va", "train")
    assert VA_HEADER in str(err.value)


def test_affwild2_refuses_frame_symlink_out_of_root(tmp_path: Path) -> None:
    fake = write_affwild2_tree(tmp_path / "aw", videos=("v1",), splits={"va": {"v1": "train"}})
    outside = tmp_path / "secret.jpg"
    write_image(outside)
    frame = fake.root / "cropped_aligned" / "v1" / "00003.jpg"  # the missing frame
    os.symlink(outside, frame)
    with pytest.raises(DatasetError, match="symbolic link"):
        AffWild2(fake.root, "va", "train")


def test_affwild2_missing_split_folder_is_named(tmp_path: Path) -> None:
    fake = write_affwild2_tree(tmp_path, videos=("v1",), splits={"va": {"v1": "train"}})
    with pytest.raises(DatasetError, match="Validation_Set"):
        AffWild2(fake.root, "va", "validation")


# ---------------------------------------------------------------------------------- AffectNet


def test_affectnet_remap_drop_and_crop(tmp_path: Path) -> None:
    fake = write_affectnet_tree(tmp_path, missing=(3,))
    ds = AffectNet(fake.root, fake.csv_path)
    rows = {r.path: r for r in fake.rows}
    # class 3 has no image; classes 8..10 have VA -2 and no usable class: dropped
    assert sorted(ds.keys) == sorted(r.path for r in fake.rows if r.expression not in (3, 8, 9, 10))
    assert ds.counts()["expression"] == 6
    assert ds.counts()["va"] == 7
    for i, sample in enumerate(all_samples(ds)):
        assert_contract(sample)
        row = rows[sample["key"]]
        if row.expression <= 6:
            assert sample["expression_mask"]
            assert EXPRESSIONS[int(sample["expression"])] == AFFECTNET_NAMES[row.expression]
        else:  # contempt: kept for its VA only
            assert row.expression == 7
            assert not sample["expression_mask"]
        assert sample["va_mask"]
        assert sample["va"].tolist() == pytest.approx([row.valence, row.arousal], abs=1e-6)
        _, _, w, h = row.box
        side = max(w, h) * 1.2  # the square around the box, margin 0.2, as in inference
        assert sample["image"].shape[0] == 3
        assert sample["image"].shape[1] == sample["image"].shape[2]
        assert side <= sample["image"].shape[1] <= side + 2
        crop = ds.load_image(i)
        centre = np.asarray(crop)[crop.size[1] // 2, crop.size[0] // 2].astype(int)
        assert np.abs(centre - np.array(row.colour)).max() < 25  # the painted face


def test_affectnet_margin_grows_the_square_and_repeats_edges(tmp_path: Path) -> None:
    fake = write_affectnet_tree(tmp_path)
    tight = AffectNet(fake.root, fake.csv_path, margin=0.0)
    default = AffectNet(fake.root, fake.csv_path)
    wide = AffectNet(fake.root, fake.csv_path, margin=1.5)  # reaches beyond the 32 px image
    whole = AffectNet(fake.root, fake.csv_path, crop=False)
    for i in range(len(tight)):
        sizes = [ds.load_image(i).size for ds in (tight, default, wide)]
        assert all(w == h for w, h in sizes)  # squares
        assert sizes[0][0] < sizes[1][0] < sizes[2][0]
        assert sizes[2][0] > 32  # beyond the border the edge pixels repeat
        big = np.asarray(wide.load_image(i))
        x1, y1, w, h = {row.path: row for row in fake.rows}[wide.keys[i]].box
        left, top, side, _ = face_box_region((x1, y1, x1 + w, y1 + h), 1.5)
        x0, y0 = math.floor(left), math.floor(top)
        x_end, y_end = math.ceil(left + side), math.ceil(top + side)
        assert min(x0, y0) < 0 or max(x_end, y_end) > 32
        if y0 < 0:  # rows above the image repeat its first row
            assert (big[:-y0] == big[-y0]).all()
        if x0 < 0:
            assert (big[:, :-x0] == big[:, -x0 : -x0 + 1]).all()
        if y_end > 32:
            inside = 32 - y0 - 1
            assert (big[inside:] == big[inside]).all()
        if x_end > 32:
            inside = 32 - x0 - 1
            assert (big[:, inside:] == big[:, inside : inside + 1]).all()
        assert whole.load_image(i).size == (32, 32)


def test_training_and_inference_cut_the_same_face_from_a_box() -> None:
    from PIL import Image

    from affectfpn.inference.align import crop_box
    from affectfpn.preprocess import crop_face_box, resize_face

    ys, xs = np.mgrid[0:120, 0:160]
    ramp = np.stack([xs * 1.5, ys * 2.0, (xs + ys) * 0.7], -1).clip(0, 255).astype(np.uint8)
    box = (50.0, 30.0, 98.0, 86.0)  # 48 x 56: the square side is 56 * 1.2 = 67.2
    assert face_box_region(box) == pytest.approx((40.4, 24.4, 67.2, 67.2))
    trained = np.asarray(resize_face(crop_face_box(Image.fromarray(ramp), box), (48, 48)))
    inferred = crop_box(ramp, box, (48, 48))
    # the same region (up to whole pixels: at most 1 px of 67 at each border) and filter
    assert np.abs(trained.astype(int) - inferred).mean() < 2.0
    with pytest.raises(ValueError, match="outside"):
        crop_face_box(Image.fromarray(ramp), (500.0, 500.0, 520.0, 530.0))


def test_affectnet_errors_name_file_and_line(tmp_path: Path) -> None:
    fake = write_affectnet_tree(tmp_path)
    lines = fake.csv_path.read_text().splitlines()
    bad = lines[3].split(",")
    bad[1] = "left"
    lines[3] = ",".join(bad)
    fake.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{fake.csv_path}:4")):
        AffectNet(fake.root, fake.csv_path)
    lines = write_affectnet_tree(tmp_path).csv_path.read_text().splitlines()
    lines[2] = "../escape.jpg," + lines[2].split(",", 1)[1]
    fake.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{fake.csv_path}:3")):
        AffectNet(fake.root, fake.csv_path)


# ---------------------------------------------------------------------------------- ExpW


def test_expw_faces_of_one_image_are_distinct_samples(tmp_path: Path) -> None:
    fake = write_expw_tree(tmp_path, faces_per_image=(1, 2, 3))
    ds = ExpW(fake.root)
    assert len(ds) == 6
    assert len(set(ds.keys)) == 6
    assert set(ds.keys) == {f"{f.image}#{f.face_id}" for f in fake.faces}
    faces = {f"{f.image}#{f.face_id}": f for f in fake.faces}
    crops = []
    for i, sample in enumerate(all_samples(ds)):
        assert_contract(sample)
        face = faces[sample["key"]]
        assert EXPRESSIONS[int(sample["expression"])] == EXPW_NAMES[face.label]
        assert sample["expression_mask"]
        assert not sample["va_mask"]
        assert not sample["au_mask"].any()
        top, left, right, bottom = face.box
        crop = np.asarray(ds.load_image(i)).astype(int)
        side = max(bottom - top, right - left) * 1.2  # the square of inference's box crop
        assert crop.shape[0] == crop.shape[1]
        assert side <= crop.shape[0] <= side + 2
        assert np.abs(crop[crop.shape[0] // 2, crop.shape[1] // 2] - face.colour).max() < 25
        crops.append(crop.mean(axis=(0, 1)))
    # the three faces of the last image are three different crops
    last = [i for i, k in enumerate(ds.keys) if k.startswith(fake.faces[-1].image)]
    assert len(last) == 3
    assert min(np.abs(crops[a] - crops[b]).max() for a in last for b in last if a < b) > 20


def test_expw_min_confidence_and_malformed_line(tmp_path: Path) -> None:
    fake = write_expw_tree(tmp_path)
    confident = ExpW(fake.root, min_confidence=0.1)
    assert len(confident) == len(fake.faces) - 1
    assert f"{fake.faces[-3].image}#0" not in confident.keys  # the 0.05 face
    text = fake.label_file.read_text().splitlines()
    text[1] = text[1] + " extra"
    fake.label_file.write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{fake.label_file}:2")):
        ExpW(fake.root)
    text[1] = "/etc/passwd 0 1 1 5 5 0.9 1"
    fake.label_file.write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{fake.label_file}:2")):
        ExpW(fake.root)


# ---------------------------------------------------------------------------------- folders


def test_image_folder_synonyms_cache_and_exclude(tmp_path: Path) -> None:
    paths = write_image_folder(
        tmp_path / "val", {"Angry": 2, "disgusted": 1, "happiness": 3, "surprise": 2}
    )
    plain = ImageFolderExpressions(tmp_path / "val")
    assert plain.counts()["expression/Anger"] == 2
    assert plain.counts()["expression/Disgust"] == 1
    assert plain.counts()["expression/Happiness"] == 3
    assert plain.counts()["expression/Surprise"] == 2
    assert set(plain.keys) == {p for ps in paths.values() for p in ps}
    cached = ImageFolderExpressions(tmp_path / "val", cache=True)
    plain_resized = ImageFolderExpressions(tmp_path / "val", image_size=(20, 24))
    cached_resized = ImageFolderExpressions(tmp_path / "val", cache=True, image_size=(20, 24))
    for i in range(len(plain)):
        assert torch.equal(plain_resized[i]["image"], cached_resized[i]["image"])
        assert cached_resized[i]["image"].shape == (3, 20, 24)
    assert cached.cached
    assert isinstance(cached.cached_images, np.ndarray)
    assert cached.cached_images.shape == (8, 16, 16)  # grey kept as one channel
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert a["key"] == b["key"]
        assert torch.equal(a["image"], b["image"])
        assert b["image"].shape == (3, 16, 16)
        assert torch.equal(b["image"][0], b["image"][2])  # grey expanded to RGB
    listing = tmp_path / "overlap.txt"
    listing.write_text(f"val/{paths['Angry'][0]}\n{paths['happiness'][1]}\ntest/other/x.jpg\n")
    kept = ImageFolderExpressions(tmp_path / "val", exclude=read_path_list(listing))
    assert len(kept) == len(plain) - 2
    assert paths["Angry"][0] not in kept.keys
    assert paths["happiness"][1] not in kept.keys


def test_image_folder_unknown_class_and_class_map(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"happy": 1, "contempt": 2})
    with pytest.raises(DatasetError, match=r"'contempt'.*class_map"):
        ImageFolderExpressions(tmp_path)
    ds = ImageFolderExpressions(tmp_path, class_map={"happy": "Happiness", "contempt": None})
    assert ds.keys == ["happy/img_000.jpg"]
    assert int(ds[0]["expression"]) == 4
    ds = ImageFolderExpressions(tmp_path, class_map={"HAPPY": 0, "contempt": "disgust"})
    assert ds.counts()["expression/Neutral"] == 1
    assert ds.counts()["expression/Disgust"] == 2


def test_image_folder_refuses_symlink_out_of_root(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "root", {"sad": 1})
    write_image(tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", tmp_path / "root" / "sad" / "link.jpg")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        ImageFolderExpressions(tmp_path / "root")


# ---------------------------------------------------------------------------------- LabelCSV


def test_label_csv_missing_cells_names_and_au_styles(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.png", "sub/c.jpg", "d.jpg"):
        write_image(tmp_path / name)
    (tmp_path / "labels.csv").write_text(
        "path,valence,arousal,expression,AU01_c,AU12,AU45_c,AU04_r\n"
        "a.jpg,0.5,-0.25,happy,1,0,1,3.5\n"
        "b.png,,,,,,,\n"
        "sub/c.jpg,-5,-5,2,-1,1,,\n"
        "d.jpg,0.1,,SURPRISE,0.25,,0,\n"
    )
    ds = LabelCSV(tmp_path / "labels.csv")
    assert ds.keys == ["a.jpg", "b.png", "sub/c.jpg", "d.jpg"]
    a, b, c, d = all_samples(ds)
    for s in (a, b, c, d):
        assert_contract(s)
    au1, au12 = ACTION_UNITS.index("AU1"), ACTION_UNITS.index("AU12")
    assert a["va_mask"]
    assert a["va"].tolist() == [0.5, -0.25]
    assert a["expression_mask"]
    assert EXPRESSIONS[int(a["expression"])] == "Happiness"
    assert a["au_mask"].nonzero().flatten().tolist() == [au1, au12]
    assert a["au"][au1] == 1
    assert a["au"][au12] == 0
    assert not b["va_mask"]
    assert not b["expression_mask"]
    assert not b["au_mask"].any()
    assert not c["va_mask"]  # -5 marker
    assert c["expression_mask"]
    assert int(c["expression"]) == 2
    assert c["au_mask"].nonzero().flatten().tolist() == [au12]
    assert not d["va_mask"]  # arousal missing
    assert EXPRESSIONS[int(d["expression"])] == "Surprise"
    assert d["au"][au1] == 0.25


def test_label_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    write_image(tmp_path / "data" / "a.jpg")
    write_image(tmp_path / "elsewhere.jpg")
    csv_path = tmp_path / "data" / "labels.csv"
    cases = {
        "path,expression\na.jpg,happy\na.jpg\n": 3,  # wrong column count
        "path,valence,arousal\na.jpg,0.1,high\n": 2,  # non-numeric
        "path,expression\na.jpg,bored\n": 2,  # unknown expression
        "path,expression\n../elsewhere.jpg,1\n": 2,  # escapes the root
        f"path,expression\n{tmp_path / 'elsewhere.jpg'},1\n": 2,  # absolute
        "path,AU1\na.jpg,3\n": 2,  # AU is not 0/1/probability
        "path,expression\na.jpg,1\na.jpg,2\n": 3,  # duplicate path
    }
    for text, line in cases.items():
        csv_path.write_text(text)
        with pytest.raises(DatasetError, match=re.escape(f"{csv_path}:{line}")):
            LabelCSV(csv_path)
    os.symlink(tmp_path / "elsewhere.jpg", tmp_path / "data" / "link.jpg")
    csv_path.write_text("path,expression\na.jpg,1\nlink.jpg,1\n")
    with pytest.raises(DatasetError, match=re.escape(f"{csv_path}:3")):
        LabelCSV(csv_path)


# ---------------------------------------------------------------------------------- pseudo labels


def _teacher_table(keys: list[str], seed: int = 0, soft: bool = False) -> LabelTable:
    rng = np.random.default_rng(seed)
    n = len(keys)
    return LabelTable.from_teacher_outputs(
        keys,
        va=rng.uniform(-1.5, 1.5, (n, 2)),
        expression_logits=rng.normal(size=(n, 7)),
        au_logits=rng.normal(size=(n, 12)),
        soft_expression=soft,
    )


def test_label_table_round_trip_csv_and_json(tmp_path: Path) -> None:
    keys = [f"v/{i:05d}" for i in range(1, 7)]
    for soft in (False, True):
        table = _teacher_table(keys, soft=soft)
        assert np.abs(table.labels.va).max() <= 0.99  # clipped
        assert set(np.unique(table.labels.au)) <= {0.0, 1.0}
        for suffix in (".csv", ".json"):
            path = tmp_path / f"t{int(soft)}{suffix}"
            table.save(path)
            back = LabelTable.load(path)
            assert back.key_list == keys
            assert back.has_soft_expression == soft
            for name in ("va", "va_mask", "expression", "expression_mask", "au", "au_mask"):
                np.testing.assert_allclose(
                    getattr(back.labels, name), getattr(table.labels, name), atol=1e-6
                )
            back_soft, table_soft = back.labels.expression_soft, table.labels.expression_soft
            if soft:
                assert back_soft is not None
                assert table_soft is not None
                np.testing.assert_allclose(back_soft, table_soft, atol=1e-6)
                assert np.array_equal(back.labels.expression, back_soft.argmax(axis=1))
            else:
                assert back_soft is None


def test_label_table_files_refuse_duplicates_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("key,valence,arousal\na,0.1,0.2\nb,0.3,0.4\na,0.5,0.6\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:4")):
        LabelTable.load(path)
    path.write_text("key,valence,arousal\na,0.1,2.0\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:2")):
        LabelTable.load(path)
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"format": "affectfpn-label-table", "labels": {"a": {"va": [3, 0]}}}))
    with pytest.raises(DatasetError, match="'a'"):
        LabelTable.load(bad)


def test_with_pseudo_labels_joins_by_key_not_order(affwild2: FakeAffWild2, tmp_path: Path) -> None:
    ds = AffWild2MultiTask(affwild2.root, "train")
    keys = ds.keys
    table = _teacher_table(keys, seed=3)
    table.save(tmp_path / "in_order.csv")
    lines = (tmp_path / "in_order.csv").read_text().splitlines()
    body = lines[1:]
    np.random.default_rng(0).shuffle(body)
    (tmp_path / "shuffled.csv").write_text("\n".join([lines[0], *body]) + "\n")
    shuffled = LabelTable.load(tmp_path / "shuffled.csv")
    assert shuffled.key_list != table.key_list

    filled = WithPseudoLabels(ds, shuffled)
    real = {s["key"]: s for s in all_samples(ds)}
    for sample in all_samples(filled):
        assert_contract(sample)
        key, orig, teacher = sample["key"], real[sample["key"]], table[sample["key"]]
        assert sample["va_mask"]
        assert sample["expression_mask"]
        assert sample["au_mask"].all()
        want_va = orig["va"] if orig["va_mask"] else teacher["va"]
        assert torch.allclose(sample["va"], want_va), key
        want_ex = orig["expression"] if orig["expression_mask"] else teacher["expression"]
        assert int(sample["expression"]) == int(want_ex), key
        want_au = torch.where(orig["au_mask"], orig["au"], teacher["au"])
        assert torch.equal(sample["au"], want_au), key
        assert torch.equal(sample["image"], orig["image"])
    assert filled.filled["va"] == int((~ds.masks()["va"]).sum()) > 0

    teacher_wins = WithPseudoLabels(ds, shuffled, real_label_wins=False)
    i = next(i for i, k in enumerate(keys) if real[k]["va_mask"])
    assert torch.allclose(teacher_wins[i]["va"], table[keys[i]]["va"])
    assert not torch.allclose(teacher_wins[i]["va"], real[keys[i]]["va"])


def test_with_pseudo_labels_partial_table_and_merge(affwild2: FakeAffWild2) -> None:
    ds = AffWild2MultiTask(affwild2.root, "train")
    keys = ds.keys
    rng = np.random.default_rng(1)
    va_t = LabelTable.from_arrays(keys[::-1], va=rng.uniform(-0.5, 0.5, (len(keys), 2)))
    ex_t = LabelTable.from_arrays(keys[:4], expression=np.array([6, 5, 4, 3]))
    # a validation key in the table never adds a sample
    val_key = AffWild2(affwild2.root, "va", "validation").keys[0]
    au_t = LabelTable.from_arrays([val_key], au=np.ones((1, 12)))
    merged = LabelTable.merge([va_t, ex_t, au_t])
    assert len(merged) == len(keys) + 1
    filled = WithPseudoLabels(ds, merged)
    assert len(filled) == len(ds)
    assert val_key not in filled.keys
    masks = filled.masks()
    assert masks["va"].all()
    assert np.array_equal(masks["au"], ds.masks()["au"])  # AU came only for a validation key
    n_filled = 0
    for i, teacher in enumerate([6, 5, 4, 3]):
        real = ds[i]
        if real["expression_mask"]:  # the real label wins
            assert int(filled[i]["expression"]) == int(real["expression"])
        else:
            n_filled += 1
            assert int(filled[i]["expression"]) == teacher
    assert n_filled > 0
    assert np.array_equal(filled.masks()["expression"][4:], ds.masks()["expression"][4:])


def test_soft_expression_and_collate_through_mixed(affwild2: FakeAffWild2, tmp_path: Path) -> None:
    aw = AffWild2MultiTask(affwild2.root, "train", image_size=(16, 16))
    soft = WithPseudoLabels(aw, _teacher_table(aw.keys, soft=True))
    expw = ExpW(write_expw_tree(tmp_path / "expw").root, image_size=(16, 16))
    mixed = MixedDataset([soft, expw], names=["affwild2", "expw"])
    assert mixed.emits_expression_soft
    assert len(mixed) == len(aw) + len(expw)
    assert mixed.keys[0].startswith("affwild2:")
    assert mixed.keys[-1].startswith("expw:")
    assert len(set(mixed.keys)) == len(mixed)
    batches = list(DataLoader(mixed, batch_size=5, shuffle=False))
    batch = batches[0]
    assert batch["image"].shape == (5, 3, 16, 16)
    assert batch["image"].dtype == torch.uint8
    assert batch["expression_soft"].shape == (5, 7)
    keys = [k for b in batches for k in b["key"]]
    assert keys == mixed.keys
    soft_all = torch.cat([b["expression_soft"] for b in batches])
    expr_all = torch.cat([b["expression"] for b in batches])
    mask_all = torch.cat([b["expression_mask"] for b in batches])
    assert torch.allclose(soft_all[mask_all].sum(dim=1), torch.ones(int(mask_all.sum())))
    assert torch.equal(soft_all[mask_all].argmax(dim=1), expr_all[mask_all])
    assert torch.all(soft_all[~mask_all] == 0)
    expw_rows = soft_all[len(aw) :]
    assert set(expw_rows.flatten().tolist()) == {0.0, 1.0}  # ExpW hard labels -> one-hot
    masks = mixed.masks()
    assert masks["expression"][len(aw) :].all()
    assert not masks["va"][len(aw) :].any()


def test_mixed_needs_names_for_clashing_keys_and_collates_plain(
    affwild2: FakeAffWild2, tmp_path: Path
) -> None:
    a = AffWild2(affwild2.root, "va", "train")
    b = AffWild2(affwild2.root, "expression", "train")
    with pytest.raises(DatasetError, match="names="):
        MixedDataset([a, b])
    fake = write_affectnet_tree(tmp_path / "an")
    an = AffectNet(fake.root, fake.csv_path, image_size=(16, 16))
    folder = write_image_folder(tmp_path / "folder", {"fear": 2})
    imf = ImageFolderExpressions(tmp_path / "folder", image_size=(16, 16))
    mixed = MixedDataset([a, an, imf])
    assert not mixed.emits_expression_soft
    batch = default_collate([mixed[i] for i in range(len(mixed))])
    assert batch["image"].shape == (len(mixed), 3, 16, 16)
    assert batch["au_mask"].shape == (len(mixed), 12)
    assert batch["key"][-2:] == folder["fear"]
    assert "expression_soft" not in batch
    assert mixed.counts()["samples"] == len(a) + len(an) + 2
    assert mixed.counts()["expression/Fear"] == an.counts()["expression/Fear"] + 2
    summary = mixed.labels_summary().splitlines()
    assert any(line.strip().startswith("imagefolder: 2 samples") for line in summary)


def test_no_invalid_value_is_ever_masked_in(tmp_path: Path) -> None:
    fake = write_affwild2_tree(tmp_path / "aw", seed=5, frames=10)
    an = write_affectnet_tree(tmp_path / "an", seed=5)
    datasets = [
        AffWild2MultiTask(fake.root, "train", every_k=1),
        AffWild2MultiTask(fake.root, "validation"),
        AffectNet(an.root, an.csv_path),
    ]
    checked = 0
    for ds in datasets:
        labels = ds.label_arrays()
        assert np.all(np.abs(labels.va[labels.va_mask]) <= 1)
        assert not np.any(labels.va == -5)
        assert not np.any(labels.va == -2)
        assert not np.any(labels.expression < 0)
        assert not np.any(labels.au < 0)
        for sample in all_samples(ds):
            assert_contract(sample)
            checked += 1
    assert checked > 40


# ---------------------------------------------------------------------------------- FER2013


@pytest.mark.shared
def test_fer2013_val_through_image_folder(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shared_dir / "data" / "fer2013"
    if not (root / "val").is_dir():
        pytest.skip(f"FER2013 not found at {root}")
    decoded: list[str] = []
    opened: list[str] = []
    real_decode, real_open = _data_images.decode_images, _data_images.open_rgb

    def decode_spy(paths: list[str], **kwargs: object) -> object:
        decoded.extend(paths)
        return real_decode(paths, **kwargs)  # type: ignore[arg-type]

    def open_spy(path: str) -> object:
        opened.append(path)
        return real_open(path)

    monkeypatch.setattr(_data_images, "decode_images", decode_spy)
    monkeypatch.setattr(_data_images, "open_rgb", open_spy)
    ds = ImageFolderExpressions(root / "val", cache=True, image_size=(32, 32))
    # Bounded work (not timed: a loaded machine makes seconds flaky): the cache decoded every
    # image exactly once, and samples come from it without opening a file.
    assert len(decoded) == len(set(decoded)) == 3589
    counts = ds.counts()
    # class sizes of the PublicTest split (shared/README.md)
    expected = {"Anger": 467, "Disgust": 56, "Fear": 496, "Happiness": 895, "Neutral": 607}
    expected |= {"Sadness": 653, "Surprise": 415}
    assert {n: counts[f"expression/{n}"] for n in EXPRESSIONS} == expected
    images = ds.cached_images
    assert isinstance(images, np.ndarray)
    assert images.shape == (3589, 48, 48)
    assert images.dtype == np.uint8
    sample = ds[0]
    assert opened == []
    assert sample["image"].shape == (3, 32, 32)
    assert sample["key"].startswith("angry/")
    overlap = read_path_list(root / "overlap_with_train.txt")
    clean = ImageFolderExpressions(root / "val", exclude=overlap)
    assert len(clean) == 3589 - sum(p.startswith("val/") for p in overlap) == 3589 - 280
