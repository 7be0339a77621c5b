"""ISIC 2018 Task 3 layout: a folder of images and a one-hot ground-truth CSV.

The CSV has columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (any order), one row per image, exactly one
1 per row (written ``1`` or ``1.0``). The classes are HAM10000's, so ``dx`` uses HAM's lowercase names.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from qana_keras import CLASSES
from qana_keras.data.checks import DatasetError
from qana_keras.data.layout import read_table, row_image_and_class, scan_images

CLASS_COLUMNS = {c.upper(): c for c in CLASSES}  # "AKIEC" -> "akiec", ...

def load_metadata(images_dir: str | Path, ground_truth_csv: str | Path) -> pd.DataFrame:
    """Columns image_id, dx (HAM names), path; sorted by image_id.

    Raises DatasetError naming every bad row (not exactly one-hot, missing or duplicate image, unsafe
    name), unknown or missing columns, and image files without a row.
    """
    images_dir = Path(images_dir).expanduser().absolute()
    csv_path = Path(ground_truth_csv).expanduser().absolute()
    problems: list[str] = []
    header, rows = read_table(csv_path, images_dir, csv_path.parent, "see data/README.md (ISIC 2018)", problems)
    expected = ["image", *CLASS_COLUMNS]
    unknown = [c for c in header if c not in expected]
    missing = [c for c in expected if c not in header]
    if unknown or missing or len(set(header)) != len(header):
        raise DatasetError(f"{csv_path}: header {','.join(header)!r} does not match the ISIC 2018 Task 3 "
                           f"ground truth ({','.join(expected)}): unknown {unknown}, missing {missing}")
    col = {c: i for i, c in enumerate(header)}

    by_stem = scan_images(images_dir, images_dir, problems)

    name = csv_path.name
    seen: dict[str, int] = {}
    records = []
    for line, fields in rows:
        where = f"{name} line {line} (image {fields[col['image']]!r})"
        parsed = row_image_and_class(fields, col, CLASS_COLUMNS, where, "ISIC_0024306", problems)
        if parsed is None:
            continue
        image_id, column = parsed
        if image_id in seen:
            problems.append(f"{where}: duplicate image, first at line {seen[image_id]}; remove one of the rows")
            continue
        seen[image_id] = line
        files = by_stem.get(image_id, [])
        if len(files) != 1:
            problems.append(f"{where}: " + (f"no image file {image_id}.jpg (or .jpeg/.png) in {images_dir}; "
                                            "put it there or remove the row" if not files else
                                            f"{len(files)} files match ({', '.join(p.name for p in files)}); keep one"))
            continue
        records.append((image_id, CLASS_COLUMNS[column], str(files[0])))
    extra = sorted(p.name for stem, files in by_stem.items() if stem not in seen for p in files)
    problems += [f"{images_dir.name}/{n}: image file has no row in {name}; add its row or remove it" for n in extra]
    if problems:
        raise DatasetError(f"ISIC 2018 data ({csv_path}, {images_dir}) is not usable; fix the problems below",
                           problems)
    df = pd.DataFrame(records, columns=["image_id", "dx", "path"], dtype=str)
    return df.sort_values("image_id").reset_index(drop=True)
