"""HAM10000 loading and validation: every bad input is reported with its file or CSV line."""
from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fixtures import REPO, real_data_dir, write_ham10000_fixture
from qana_keras import CLASSES
from qana_keras.data import ham10000
from qana_keras.data.checks import DatasetError
from qana_keras.data.ham10000 import load_metadata, validate
from qana_keras.data.images import read_rgb

@pytest.fixture
def ham(tmp_path) -> Path:
    return write_ham10000_fixture(tmp_path / "ham")


def read_rows(root: Path) -> list[dict]:
    with open(root / ham10000.METADATA_FILE, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(root: Path, rows: list[dict], fieldnames=None) -> None:
    with open(root / ham10000.METADATA_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def image_of(root: Path, image_id: str) -> Path:
    (path,) = root.glob(f"*/{image_id}.*")
    return path


def errors_of(root: Path, check_images: bool = True) -> list[str]:
    report = validate(root, check_images=check_images)
    assert not report.ok
    with pytest.raises(DatasetError) as info:
        load_metadata(root, check_images=check_images)
    assert info.value.problems == report.errors  # load_metadata and validate agree
    return report.errors


def only(errors: list[str], text: str) -> str:
    hits = [e for e in errors if text in e]
    assert len(hits) == 1, errors
    return hits[0]


# --- good data ---------------------------------------------------------------------------------------


def test_load_two_parts(ham):
    df = load_metadata(ham)
    rows = read_rows(ham)
    assert len(df) == len(rows) and set(df["dx"]) == set(CLASSES)
    assert list(df["image_id"]) == sorted(df["image_id"])
    assert list(df.columns) == [*ham10000.REQUIRED_COLUMNS[:2], "dx", *ham10000.OPTIONAL_COLUMNS, "path"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert {Path(p).parent.name for p in df["path"]} == set(ham10000.PART_DIRS)
    assert df["age"].dtype.kind == "f"


def test_find_image_dirs_layouts(tmp_path):
    two = write_ham10000_fixture(tmp_path / "two", n_lesions_per_class=1)
    single = write_ham10000_fixture(tmp_path / "single", n_lesions_per_class=1, layout="single")
    assert [d.name for d in ham10000.find_image_dirs(two)] == list(ham10000.PART_DIRS)
    assert ham10000.find_image_dirs(single) == [single / "images"]
    flat = tmp_path / "flat"
    shutil.copytree(single / "images", flat)
    shutil.copy(single / ham10000.METADATA_FILE, flat)
    assert ham10000.find_image_dirs(flat) == [flat]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image folder"):
        ham10000.find_image_dirs(empty)


@pytest.mark.parametrize("layout", ["single", "flat"])
def test_single_folder_layouts_load(tmp_path, layout):
    root = write_ham10000_fixture(tmp_path / "d", layout="single", n_lesions_per_class=2)
    if layout == "flat":
        for p in (root / "images").iterdir():
            p.rename(root / p.name)
        (root / "images").rmdir()
    df = load_metadata(root, check_images=True)
    assert len(df) == len(read_rows(root))
    assert validate(root).ok


def test_png_and_uppercase_extensions_match(ham):
    rows = read_rows(ham)
    first, second = image_of(ham, rows[0]["image_id"]), image_of(ham, rows[1]["image_id"])
    Image.open(first).convert("RGB").save(first.with_suffix(".png"))
    first.unlink()
    second.rename(second.with_suffix(".JPG"))
    df = load_metadata(ham, check_images=True).set_index("image_id")
    assert df.loc[rows[0]["image_id"], "path"].endswith(".png")
    assert df.loc[rows[1]["image_id"], "path"].endswith(".JPG")


def test_validate_ok_report(ham):
    report = validate(ham)
    assert report.ok and report.errors == [] and report.warnings == []
    rows = read_rows(ham)
    assert report.n_rows == report.n_images == len(rows)
    assert report.n_lesions == len({r["lesion_id"] for r in rows}) == 7 * 4
    assert list(report.class_counts) == list(CLASSES) and sum(report.class_counts.values()) == len(rows)
    assert report.seconds > 0 and report.images_checked
    assert "OK" in report.summary() and "mel" in report.summary()


def test_read_rgb(ham):
    path = image_of(ham, read_rows(ham)[0]["image_id"])
    image = read_rgb(path)
    assert image.shape == (150, 200, 3) and image.dtype == np.uint8


# --- missing data --------------------------------------------------------------------------------------


def test_missing_data_dir(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_metadata(tmp_path / "nowhere")
    message = str(info.value)
    assert "nowhere" in message and "qana data download" in message and "QANA_DATA_DIR" in message
    report = validate(tmp_path / "nowhere")
    assert not report.ok and "QANA_DATA_DIR" in report.errors[0]


def test_missing_csv(ham):
    (ham / ham10000.METADATA_FILE).unlink()
    with pytest.raises(DatasetError) as info:
        load_metadata(ham)
    assert ham10000.METADATA_FILE in str(info.value) and "qana data download" in str(info.value)


def test_missing_image_file(ham):
    rows = read_rows(ham)
    image_of(ham, rows[2]["image_id"]).unlink()
    error = only(errors_of(ham, check_images=False), rows[2]["image_id"])
    assert "line 4" in error and "no image file" in error and "remove the row" in error


def test_missing_part_folder(ham):
    shutil.rmtree(ham / ham10000.PART_DIRS[1])
    errors = errors_of(ham, check_images=False)
    assert ham10000.PART_DIRS[1] in errors[0] and "unzip" in errors[0]


def test_extra_image_file(ham):
    shutil.copy(image_of(ham, read_rows(ham)[0]["image_id"]), ham / ham10000.PART_DIRS[1] / "ISIC_9999999.jpg")
    error = only(errors_of(ham, check_images=False), "ISIC_9999999")
    assert f"{ham10000.PART_DIRS[1]}/ISIC_9999999.jpg" in error and "no row" in error and "1 such file" in error


def test_two_files_for_one_image_id(ham):
    image_id = read_rows(ham)[0]["image_id"]
    path = image_of(ham, image_id)
    shutil.copy(path, path.with_suffix(".png"))
    assert "2 image files match" in only(errors_of(ham, check_images=False), image_id)


# --- bad image content ---------------------------------------------------------------------------------


def test_corrupt_image(ham):
    image_id = read_rows(ham)[1]["image_id"]
    path = image_of(ham, image_id)
    path.write_bytes(b"this is not a JPEG" * 20)
    error = only(errors_of(ham), image_id)
    assert path.name in error and "line 3" in error and "cannot be decoded" in error
    with pytest.raises(DatasetError, match=path.name):
        read_rgb(path)
    assert load_metadata(ham, check_images=False) is not None  # decoding is only checked when asked


def test_empty_image_file(ham):
    path = image_of(ham, read_rows(ham)[0]["image_id"])
    path.write_bytes(b"")
    assert "empty" in only(errors_of(ham), path.name)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg(ham, monkeypatch, load_truncated):
    # With LOAD_TRUNCATED_IMAGES (set by some libraries) PIL pads silently; the FFD9 check still catches it.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    path = image_of(ham, read_rows(ham)[0]["image_id"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in only(errors_of(ham), path.name)
    with pytest.raises(DatasetError, match="truncated"):
        read_rgb(path)


@pytest.mark.parametrize("mode, ext", [("L", ".jpg"), ("RGBA", ".png"), ("P", ".png"), ("CMYK", ".jpg"),
                                       ("LA", ".png")])
def test_non_rgb_image(ham, mode, ext):
    image_id = read_rows(ham)[0]["image_id"]
    path = image_of(ham, image_id)
    image = Image.open(path).convert(mode)
    path.unlink()
    image.save(path.with_suffix(ext))
    error = only(errors_of(ham), image_id)
    assert path.with_suffix(ext).name in error and f"mode {mode}" in error
    with pytest.raises(DatasetError, match=f"mode {mode}"):
        read_rgb(path.with_suffix(ext))


# --- bad metadata --------------------------------------------------------------------------------------


def test_duplicate_image_id(ham):
    rows = read_rows(ham)
    write_rows(ham, rows + [rows[3]])
    error = only(errors_of(ham, check_images=False), "duplicate")
    assert rows[3]["image_id"] in error and f"line {len(rows) + 2}" in error and "first at line 5" in error


def test_unknown_dx(ham):
    rows = read_rows(ham)
    rows[5]["dx"] = "melanoma"
    write_rows(ham, rows)
    error = only(errors_of(ham, check_images=False), "unknown dx")
    assert "line 7" in error and rows[5]["image_id"] in error and "'melanoma'" in error and "akiec" in error


def test_missing_required_column(ham):
    rows = read_rows(ham)
    for r in rows:
        del r["dx"]
    write_rows(ham, rows)
    error = only(errors_of(ham, check_images=False), "missing required column")
    assert "dx" in error and ham10000.METADATA_FILE in error


def test_missing_optional_column_is_a_warning(ham):
    rows = read_rows(ham)
    for r in rows:
        del r["localization"]
    write_rows(ham, rows)
    report = validate(ham, check_images=False)
    assert report.ok and any("localization" in w for w in report.warnings)
    assert "localization" not in load_metadata(ham).columns


def test_empty_required_value(ham):
    rows = read_rows(ham)
    rows[0]["lesion_id"] = ""
    write_rows(ham, rows)
    error = only(errors_of(ham, check_images=False), "empty lesion_id")
    assert "line 2" in error and rows[0]["image_id"] in error


def test_bad_age(ham):
    rows = read_rows(ham)
    rows[0]["age"] = "old"
    write_rows(ham, rows)
    assert "line 2" in only(errors_of(ham, check_images=False), "'old'")


def test_lesion_with_two_diagnoses(ham):
    rows = read_rows(ham)
    other = next(r for r in rows if r["dx"] != rows[0]["dx"])
    other["lesion_id"] = rows[0]["lesion_id"]
    write_rows(ham, rows)
    assert "more than one dx" in only(errors_of(ham, check_images=False), rows[0]["lesion_id"])


def test_row_with_wrong_field_count(ham):
    path = ham / ham10000.METADATA_FILE
    lines = path.read_text().splitlines()
    lines[3] += ",surplus"
    path.write_text("\n".join(lines) + "\n")
    errors = errors_of(ham, check_images=False)
    assert any("line 4" in e and "8 fields" in e for e in errors)
    assert any("no row" in e for e in errors)  # the row's image is then unaccounted for: said, not hidden


@pytest.mark.parametrize("bad_id", ["../etc/passwd", "a/b", "a\\b", "/etc/passwd", ".hidden", "..", "C:evil"])
def test_path_traversal_image_id(ham, bad_id):
    rows = read_rows(ham)
    rows[0]["image_id"] = bad_id
    write_rows(ham, rows)
    error = only(errors_of(ham, check_images=False), "path traversal")
    assert "line 2" in error and repr(bad_id) in error


def test_unsafe_name_rules():
    assert ham10000.unsafe_name_problem("ISIC_0024306") is None
    assert ham10000.unsafe_name_problem("a\0b") == "contains a NUL byte"


def test_many_problems_are_all_listed(ham):
    rows = read_rows(ham)
    for r in rows:
        r["dx"] = "??"
    write_rows(ham, rows)
    with pytest.raises(DatasetError) as info:
        load_metadata(ham)
    assert len(info.value.problems) == len(rows) > ham10000.MAX_LISTED
    message = str(info.value)
    assert f"{len(rows)} problems" in message and f"and {len(rows) - ham10000.MAX_LISTED} more" in message
    assert message.count("unknown dx") == ham10000.MAX_LISTED


def test_hidden_files_are_ignored_with_a_warning(ham):
    (ham / ham10000.PART_DIRS[0] / "._ISIC_0024306.jpg").write_bytes(b"resource fork")
    report = validate(ham)
    assert report.ok and any("hidden" in w for w in report.warnings)


# --- real data -----------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ham10000():
    root = real_data_dir()
    if root is None:
        pytest.skip("real HAM10000 not found: set QANA_DATA_DIR or place it at ../shared/data/ham10000")
    from qana_keras.data.splits import read_split, split_summary

    start = time.perf_counter()
    report = validate(root, check_images=True)
    assert report.ok, report.summary()
    assert (report.n_rows, report.n_images, report.n_lesions) == (10015, 10015, 7470)
    assert report.class_counts == {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113,
                                   "nv": 6705, "vasc": 142}
    meta = load_metadata(root)
    assert len(meta) == 10015
    split = read_split(REPO / "data" / "splits" / "ham10000_lesion_split.csv", meta)
    summary = split_summary(split)
    assert summary["shared_lesions"] == 0
    assert all(n > 0 for s in ("train", "val", "test") for n in summary[s]["classes"].values())
    assert time.perf_counter() - start < 60
