"""ISIC 2019 training layout: a second dermoscopy source for training, grouped by lesion, never a test set.

Layout (the official release, or any subset of it)::

    root/ISIC_2019_Training_Input/ISIC_xxxxxxx[_downsampled].jpg
    root/ISIC_2019_Training_GroundTruth.csv   image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot, 0/1 or 0.0/1.0)
    root/ISIC_2019_Training_Metadata.csv      image,age_approx,anatom_site_general,lesion_id,sex (optional)

Decisions, each kept visible in ``df.attrs``:
  * AK -> akiec (actinic keratosis is the main member of HAM's akiec); the other six classes map one to one.
  * SCC and UNK have no HAM10000 class: invasive squamous cell carcinoma is not in HAM's akiec (actinic
    keratoses and intraepithelial carcinoma only), as for PAD-UFES-20. Their rows are left out and counted.
  * ``_downsampled`` ids name the same image as the id without the suffix: the file keeps the full id,
    ``image_id`` drops the suffix, so duplicates across the two spellings are caught.
  * The full release also lists the 10,015 HAM10000 images under their own ids (ISIC_0024306..ISIC_0034320,
    lesion ids ``HAM_...``). Those rows are left out (``attrs["ham10000_copies"]``): HAM10000 enters training
    only through its committed lesion split, so no validation or test lesion can come in through a copy.
  * Rows without ``lesion_id`` are lesions of their own (``lesion_id = "isic2019:<image_id>"``).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pandas as pd

from qana_keras.data.checks import DatasetError, link_outside_problem, read_csv_rows
from qana_keras.data.layout import read_table, row_image_and_class, scan_images

SOURCE = "isic2019"
IMAGES_DIR = "ISIC_2019_Training_Input"
GROUND_TRUTH_FILE = "ISIC_2019_Training_GroundTruth.csv"
METADATA_FILE = "ISIC_2019_Training_Metadata.csv"
CLASS_COLUMNS: dict[str, str | None] = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl",
                                        "DF": "df", "VASC": "vasc", "SCC": None, "UNK": None}
DOWNSAMPLED_SUFFIX = "_downsampled"
HAM10000_ID_RANGE = (24306, 34320)  # ISIC_0024306..ISIC_0034320 are the HAM10000 images
VAL_PERCENT = 15  # lesions whose id hashes below this percentile form the source's validation split


def canonical_id(image: str) -> str:
    """``ISIC_0000003_downsampled`` -> ``ISIC_0000003``: both spellings name one image."""
    return image[: -len(DOWNSAMPLED_SUFFIX)] if image.endswith(DOWNSAMPLED_SUFFIX) else image


def is_ham10000_id(image_id: str) -> bool:
    """True for the ids the HAM10000 images carry inside ISIC 2019 (ISIC_0024306..ISIC_0034320)."""
    number = image_id[len("ISIC_"):]
    return image_id.startswith("ISIC_") and number.isdigit() and HAM10000_ID_RANGE[0] <= int(number) <= HAM10000_ID_RANGE[1]


def _lesion_ids(csv_path: Path, root: Path, problems: list[str]) -> dict[str, str]:
    """image id -> lesion_id from the metadata CSV (empty values left out); {} when the file is absent."""
    if not csv_path.is_file():
        return {}
    outside = csv_path.is_symlink() and link_outside_problem(csv_path, root)
    if outside:
        problems.append(f"{csv_path.name} {outside}")
        return {}
    parsed = read_csv_rows(csv_path, problems)
    if parsed is None:
        return {}
    header, rows = parsed
    if "image" not in header or "lesion_id" not in header:
        problems.append(f"{csv_path.name}: needs columns image and lesion_id (has {','.join(header)})")
        return {}
    image_col, lesion_col = header.index("image"), header.index("lesion_id")
    return {canonical_id(f[image_col]): f[lesion_col].strip() for _, f in rows if f[lesion_col].strip()}


def load_metadata(root: str | Path, ham_image_ids: set[str] | None = None,
                  ham_lesion_ids: set[str] | None = None) -> pd.DataFrame:
    """Rows with a HAM10000 class: image_id, lesion_id, dx, source, path; sorted by image_id.

    ``ham_image_ids`` / ``ham_lesion_ids`` (from the HAM10000 metadata) catch HAM copies beyond the id range.
    Raises DatasetError naming every bad row (not one-hot, unsafe or duplicate id, missing or ambiguous file)
    and every image without a row.
    """
    root = Path(root).expanduser().absolute()
    csv_path, images_dir = root / GROUND_TRUTH_FILE, root / IMAGES_DIR
    hint = f"put the ISIC 2019 training data in {root}: {GROUND_TRUTH_FILE} and {IMAGES_DIR}/ (see data/README.md)"
    problems: list[str] = []
    header, rows = read_table(csv_path, images_dir, root, hint, problems)
    expected = ["image", *CLASS_COLUMNS]
    unknown = [c for c in header if c not in expected]
    missing = [c for c in expected if c not in header and c != "UNK"]  # UNK is absent from some copies
    if unknown or missing or len(set(header)) != len(header):
        raise DatasetError(f"{csv_path}: header {','.join(header)!r} does not match the ISIC 2019 ground truth "
                           f"({','.join(expected)}): unknown {unknown}, missing {missing}")
    col = {c: i for i, c in enumerate(header)}
    lesions = _lesion_ids(root / METADATA_FILE, root, problems)
    files = scan_images(images_dir, root, problems)
    ham_image_ids, ham_lesion_ids = ham_image_ids or set(), ham_lesion_ids or set()

    seen: dict[str, int] = {}
    records, no_ham_class, ham_copies = [], defaultdict(int), 0
    for line, fields in rows:
        where = f"{csv_path.name} line {line} (image {fields[col['image']]!r})"
        parsed = row_image_and_class(fields, col, CLASS_COLUMNS, where, "ISIC_0000000", problems)
        if parsed is None:
            continue
        image, column = parsed
        image_id = canonical_id(image)
        if image_id in seen:
            problems.append(f"{where}: the same image as line {seen[image_id]} (ids differ only by "
                            f"{DOWNSAMPLED_SUFFIX!r}, or repeat); remove one of the rows")
            continue
        seen[image_id] = line
        lesion_id = lesions.get(image_id, "")
        # Rows left out need no file: a copy of the full release without its HAM10000 or SCC images is fine.
        if is_ham10000_id(image_id) or image_id in ham_image_ids or lesion_id in ham_lesion_ids \
                or lesion_id.startswith("HAM_"):
            ham_copies += 1
            continue
        dx = CLASS_COLUMNS[column]
        if dx is None:
            no_ham_class[column] += 1
            continue
        matches = files.get(image, []) or files.get(image_id, [])
        if len(matches) != 1:
            problems.append(f"{where}: " + (f"no image file {image}.jpg in {IMAGES_DIR}/; put it there or remove "
                                            "the row" if not matches else
                                            f"{len(matches)} files match ({', '.join(p.name for p in matches)}); keep one"))
            continue
        records.append((image_id, lesion_id or f"{SOURCE}:{image_id}", dx, SOURCE, str(matches[0])))
    listed = {fields[col["image"]] for _, fields in rows} | set(seen)
    extra = sorted(p.name for stem, paths in files.items() if stem not in listed for p in paths)
    problems += [f"{IMAGES_DIR}/{n}: image file has no row in {GROUND_TRUTH_FILE}; add its row or remove it"
                 for n in extra]
    if problems:
        raise DatasetError(f"ISIC 2019 data in {root} is not usable; fix the problems below", problems)
    if not records:
        raise DatasetError(f"ISIC 2019 data in {root} has no image of a HAM10000 class "
                           f"({ham_copies} HAM10000 copies, {dict(no_ham_class)} without a HAM class left out)")
    df = pd.DataFrame(records, columns=["image_id", "lesion_id", "dx", "source", "path"], dtype=str)
    df = df.sort_values("image_id").reset_index(drop=True)
    df.attrs["ham10000_copies"] = ham_copies
    df.attrs["without_ham_class"] = dict(no_ham_class)
    return df


def assign_split(frame: pd.DataFrame, val_percent: int = VAL_PERCENT) -> pd.Series:
    """``train`` or ``val`` per row, by a hash of its lesion id: every image of a lesion lands together, and the
    assignment of a lesion never changes when images are added or removed (no file to commit per release)."""
    def bucket(lesion: str) -> str:
        return "val" if int(hashlib.sha256(lesion.encode()).hexdigest()[:8], 16) % 100 < val_percent else "train"
    return frame["lesion_id"].map(bucket)
