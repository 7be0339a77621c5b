"""What every "one CSV + one image folder" layout shares (ISIC 2018, ISIC 2019, PAD-UFES-20): reading the table,
finding the image files by stem, one-hot values. HAM10000, with its two part folders, has its own reader."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from qana_keras.data.checks import (IMAGE_EXTENSIONS, DatasetError, link_outside_problem, read_csv_rows,
                                   unsafe_name_problem)


def read_table(csv_path: Path, images_dir: Path, root: Path, hint: str,
               problems: list[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line, fields)`` rows of ``csv_path``; DatasetError (ending in ``hint``) when the CSV or the
    image folder is missing, a link out of ``root``, unreadable, or the table has no rows."""
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} not found; {hint}")
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}/ not found; {hint}")
    for path in (csv_path, images_dir):
        outside = path.is_symlink() and link_outside_problem(path, root)
        if outside:
            raise DatasetError(f"{path} {outside}")
    parsed = read_csv_rows(csv_path, problems)
    if parsed is None:
        raise DatasetError(f"{csv_path} is unreadable", problems)
    header, rows = parsed
    if not rows:
        raise DatasetError(f"{csv_path} has a header but no rows: the data set is empty; {hint}")
    return header, rows


def scan_images(images_dir: Path, root: Path, problems: list[str]) -> dict[str, list[Path]]:
    """Image files of ``images_dir`` by stem (other files, e.g. LICENSE.txt, are ignored); a link out of ``root``
    is a problem, not an image."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for entry in os.scandir(images_dir):
        stem, ext = os.path.splitext(entry.name)
        if entry.is_file() and not entry.name.startswith(".") and ext.lower() in IMAGE_EXTENSIONS:
            outside = entry.is_symlink() and link_outside_problem(entry.path, root)
            if outside:
                problems.append(f"{images_dir.name}/{entry.name} {outside}")
                continue
            by_stem[stem].append(Path(entry.path))
    return by_stem


def row_image_and_class(fields: list[str], col: dict[str, int], columns, where: str, example: str,
                        problems: list[str]) -> tuple[str, str] | None:
    """(image name, the one class column set to 1) of a one-hot ground-truth row, or None with the problem added:
    an unsafe or empty name, a value other than 0/1, or not exactly one class set."""
    image = fields[col["image"]]
    unsafe = unsafe_name_problem(image) if image else "is empty"
    if unsafe:
        problems.append(f"{where}: image name {unsafe}; it must be a bare name like {example}")
        return None
    values = {c: one_hot_value(fields[col[c]]) for c in columns if c in col}
    bad = [f"{c}={fields[col[c]]!r}" for c, v in values.items() if v is None]
    ones = [c for c, v in values.items() if v == 1.0]
    if bad or len(ones) != 1:
        problems.append(f"{where}: " + (f"values must be 0 or 1, got {', '.join(bad)}" if bad else
                                        f"{len(ones)} classes set ({', '.join(ones) or 'none'}); exactly one must be 1"))
        return None
    return image, ones[0]


def one_hot_value(text: str) -> float | None:
    """0.0 or 1.0 from a one-hot cell (``1``, ``1.0``, ``0``), None for anything else."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value in (0.0, 1.0) else None
