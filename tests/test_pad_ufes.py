"""The external test sets: PAD-UFES-20 and the ISIC 2018 Task 3 layout."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from fixtures import REPO, write_isic2018_fixture, write_pad_ufes_fixture
from qana_keras import CLASSES
from qana_keras.data import isic2018, pad_ufes
from qana_keras.data.checks import DatasetError

# --- PAD-UFES-20 ---------------------------------------------------------------------------------------


def read_rows(root: Path) -> list[dict]:
    with open(root / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_rows(root: Path, rows: list[dict]) -> None:
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def pad(tmp_path) -> Path:
    return write_pad_ufes_fixture(tmp_path / "pad")


def test_pad_load_counts_missing_images(pad):
    df = pad_ufes.load_metadata(pad)
    assert len(df) == 6 * 3
    assert df.attrs["missing_images"] == 6 and len(df.attrs["missing_image_ids"]) == 6
    assert all(p.endswith(".jpg") and Path(p).is_file() for p in df["path"])  # .png in metadata, .jpg on disk
    assert list(df["img_id"]) == sorted(df["img_id"])
    assert len(df.columns) == 26 + 2


def test_pad_mapping(pad):
    df = pad_ufes.load_metadata(pad)
    assert set(pad_ufes.DIAGNOSTIC_TO_HAM) == {"ACK", "BCC", "MEL", "NEV", "SCC", "SEK"}
    assert {v for v in pad_ufes.DIAGNOSTIC_TO_HAM.values() if v} <= set(CLASSES)
    mapped = dict(zip(df["diagnostic"], df["ham_dx"]))
    assert mapped == {"ACK": "akiec", "BCC": "bcc", "MEL": "mel", "NEV": "nv", "SEK": "bkl", "SCC": None}


def test_pad_unknown_diagnostic(pad):
    rows = read_rows(pad)
    rows[4]["diagnostic"] = "XYZ"
    write_rows(pad, rows)
    with pytest.raises(DatasetError, match=r"line 6 \(img_id '.*'\): unknown diagnostic 'XYZ'"):
        pad_ufes.load_metadata(pad)


@pytest.mark.parametrize("bad_id", ["../secret.png", "a/b.png", "/etc/passwd"])
def test_pad_path_traversal(pad, bad_id):
    rows = read_rows(pad)
    rows[0]["img_id"] = bad_id
    write_rows(pad, rows)
    with pytest.raises(DatasetError) as info:
        pad_ufes.load_metadata(pad)
    assert "line 2" in str(info.value) and repr(bad_id) in str(info.value) and "path traversal" in str(info.value)


def test_pad_extra_image(pad):
    (pad / "images" / "PAT_999_1_1.jpg").write_bytes((pad / "images" / os.listdir(pad / "images")[0]).read_bytes())
    with pytest.raises(DatasetError, match="images/PAT_999_1_1.jpg: image file has no row"):
        pad_ufes.load_metadata(pad)


def test_pad_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="metadata.csv not found"):
        pad_ufes.load_metadata(tmp_path)


@pytest.mark.realdata
def test_real_pad_ufes():
    candidates = [REPO.parent / "shared" / "data" / "pad_ufes_20_partial", Path("/work/shared/data/pad_ufes_20_partial")]
    root = next((c for c in candidates if (c / "metadata.csv").is_file()), None)
    if root is None:
        pytest.skip("real PAD-UFES-20 copy not found at ../shared/data/pad_ufes_20_partial")
    df = pad_ufes.load_metadata(root)
    assert len(df) == 686 and df.attrs["missing_images"] == 2298 - 686
    assert df["diagnostic"].value_counts().to_dict() == {"BCC": 194, "NEV": 182, "SEK": 131, "ACK": 114,
                                                         "MEL": 43, "SCC": 22}


# --- ISIC 2018 Task 3 ----------------------------------------------------------------------------------


@pytest.fixture
def isic(tmp_path):
    return write_isic2018_fixture(tmp_path / "isic")


def rewrite_line(csv_path: Path, index: int, fn) -> None:
    lines = csv_path.read_text().splitlines()
    lines[index] = fn(lines[index])
    csv_path.write_text("\n".join(lines) + "\n")


def test_isic_load(isic):
    images, gt = isic
    df = isic2018.load_metadata(images, gt)
    assert list(df.columns) == ["image_id", "dx", "path"]
    assert df["dx"].value_counts().to_dict() == dict.fromkeys(CLASSES, 2)
    assert all(Path(p).is_file() for p in df["path"])


@pytest.mark.parametrize("values, expected", [
    ("1.0,1.0,0,0,0,0,0", "2 classes set"),
    ("0,0,0,0,0,0,0", "0 classes set"),
    ("0.5,0,0,0,0,0,0", "must be 0 or 1"),
])
def test_isic_not_one_hot(isic, values, expected):
    images, gt = isic
    rewrite_line(gt, 3, lambda line: line.split(",")[0] + "," + values)
    with pytest.raises(DatasetError, match=f"line 4 .*{expected}"):
        isic2018.load_metadata(images, gt)


def test_isic_missing_image(isic):
    images, gt = isic
    (images / "ISIC_0034321.jpg").unlink()
    with pytest.raises(DatasetError, match=r"line 2 \(image 'ISIC_0034321'\): no image file"):
        isic2018.load_metadata(images, gt)


def test_isic_unknown_column(isic):
    images, gt = isic
    rewrite_line(gt, 0, lambda line: line.replace("VASC", "SCC"))
    with pytest.raises(DatasetError, match=r"unknown \['SCC'\], missing \['VASC'\]"):
        isic2018.load_metadata(images, gt)


def test_isic_duplicate_and_traversal(isic):
    images, gt = isic
    lines = gt.read_text().splitlines()
    lines.append(lines[1])
    lines.append("../x," + lines[1].split(",", 1)[1])
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as info:
        isic2018.load_metadata(images, gt)
    problems = info.value.problems
    assert any(f"line {len(lines) - 1}" in p and "duplicate" in p for p in problems)
    assert any(f"line {len(lines)}" in p and "'../x'" in p for p in problems)
