"""HAM10000: find the images, read and check the metadata and (``data.images``) every image.

Nothing is dropped silently: every problem is reported with the file or CSV line it comes from,
and :func:`load_metadata` refuses to return a table that has any.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qana_keras import CLASSES
from qana_keras.data.checks import (IMAGE_EXTENSIONS, MAX_LISTED, DatasetError, link_outside_problem, read_csv_rows,
                                   unsafe_name_problem)
from qana_keras.data.images import image_problem
from qana_keras.io import display_path

log = logging.getLogger(__name__)

METADATA_FILE = "HAM10000_metadata.csv"
PART_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
SINGLE_DIR = "images"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
OPTIONAL_COLUMNS = ("dx_type", "age", "sex", "localization")


def where_to_put(data_dir: str | Path) -> str:
    """The hint every 'not found' error ends with."""
    return (f"Put the HAM10000 release in {data_dir}: {METADATA_FILE} and the images in "
            f"{PART_DIRS[0]}/ and {PART_DIRS[1]}/ (or in one {SINGLE_DIR}/ folder). "
            "`qana data download` fetches them (see data/README.md), "
            "or set QANA_DATA_DIR to a folder that already has them.")


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def find_image_dirs(data_dir: str | Path) -> list[Path]:
    """The folders holding the images: the official two parts, one ``images/`` folder, or ``data_dir`` itself.

    Part folders are matched case-insensitively (some mirrors lower-case them).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"HAM10000 folder {data_dir} does not exist. {where_to_put(data_dir)}")
    wanted = {p.lower() for p in PART_DIRS}
    parts = sorted(p for p in data_dir.iterdir() if p.name.lower() in wanted and p.is_dir())
    if parts:
        return parts
    if (data_dir / SINGLE_DIR).is_dir():
        return [data_dir / SINGLE_DIR]
    if any(_is_image_name(p.name) and p.is_file() for p in data_dir.iterdir()):
        return [data_dir]
    raise DatasetError(f"{data_dir}: no image folder found ({PART_DIRS[0]}/, {PART_DIRS[1]}/ or {SINGLE_DIR}/) "
                       f"and no images directly in it. {where_to_put(data_dir)}")


# Bytes placed before a JPEG's end marker by _jpeg_ends_early: no 0xFF in them, so a decoder reads them as
# image data (never as a marker).


# ---------------------------------------------------------------------------------------------------
# Metadata checks


@dataclass
class ValidationReport:
    """What :func:`validate` found. ``ok`` is true when there are no errors (warnings are allowed)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_images: int = 0
    n_lesions: int = 0
    class_counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    data_dir: str = ""
    images_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        status = "OK" if self.ok else f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''}"
        decoded = "every image decoded" if self.images_checked else "images not decoded"
        lines = [f"HAM10000 in {display_path(self.data_dir)}: {status}",
                 f"  {self.n_rows} metadata rows, {self.n_images} image files, {self.n_lesions} lesions "
                 f"({decoded}; {self.seconds:.1f} s)"]
        if self.class_counts:
            lines.append("  classes: " + ", ".join(f"{c} {n}" for c, n in self.class_counts.items()))
        for title, items in (("warnings", self.warnings), ("errors", self.errors)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    - {p}" for p in items[:MAX_LISTED]]
                if len(items) > MAX_LISTED:
                    lines.append(f"    ... and {len(items) - MAX_LISTED} more")
        return "\n".join(lines)


@dataclass
class _Inspection:
    df: pd.DataFrame | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_images: int = 0
    csv_path: Path | None = None


def _inspect(data_dir: str | Path, check_images: bool) -> _Inspection:
    """Every check behind load_metadata and validate; problems are collected, never raised."""
    out = _Inspection()
    data_dir = Path(data_dir).expanduser().absolute()
    csv_path = out.csv_path = data_dir / METADATA_FILE
    if not data_dir.is_dir():
        out.errors.append(f"HAM10000 folder {data_dir} does not exist. {where_to_put(data_dir)}")
        return out
    if not csv_path.is_file():
        out.errors.append(f"{csv_path} not found. {where_to_put(data_dir)}")
        return out
    try:
        image_dirs = find_image_dirs(data_dir)
    except DatasetError as e:
        out.errors.append(str(e))
        image_dirs = []
    if len(image_dirs) == 1 and image_dirs[0].name.lower() in {p.lower() for p in PART_DIRS}:
        missing = [p for p in PART_DIRS if p.lower() != image_dirs[0].name.lower()]
        out.errors.append(f"{data_dir / missing[0]}/ is missing (only {image_dirs[0].name}/ is there); "
                          f"unzip {missing[0]}.zip into it")

    # Index the image files by stem.
    by_stem: dict[str, list[Path]] = defaultdict(list)
    hidden = 0
    for d in list(image_dirs):
        outside = link_outside_problem(d, data_dir)
        if outside:
            out.errors.append(f"{d.name}/ {outside}")
            continue
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            if not entry.is_file():
                continue
            if entry.name.startswith("."):
                hidden += 1  # .DS_Store, macOS ._ resource forks from zips
            elif entry.is_symlink() and link_outside_problem(entry.path, data_dir):
                out.errors.append(f"{Path(entry.path).relative_to(data_dir)} "
                                  f"{link_outside_problem(entry.path, data_dir)}")
            elif _is_image_name(entry.name):
                by_stem[os.path.splitext(entry.name)[0]].append(Path(entry.path))
            elif d != data_dir:
                out.warnings.append(f"{Path(entry.path).relative_to(data_dir)} is not an image "
                                    f"({', '.join(IMAGE_EXTENSIONS)}); ignored")
    if hidden:
        out.warnings.append(f"{hidden} hidden file(s) in the image folders ignored")
    out.n_images = sum(len(v) for v in by_stem.values())

    def rel(p: Path) -> str:
        return str(p.relative_to(data_dir)) if p.is_relative_to(data_dir) else str(p)

    csv_outside = link_outside_problem(csv_path, data_dir)
    if csv_outside:
        out.errors.append(f"{METADATA_FILE} {csv_outside}")
        return out
    parsed = read_csv_rows(csv_path, out.errors)
    if parsed is None:
        return out
    header, rows = parsed
    name = METADATA_FILE
    if not rows:
        out.errors.append(f"{name} has a header but no rows: the data set is empty (and {out.n_images} image "
                          f"files were found); put the full HAM10000 release in {data_dir}")
        return out
    dupe_cols = sorted(c for c, n in Counter(header).items() if n > 1)
    if dupe_cols:
        out.errors.append(f"{name}: column(s) {dupe_cols} appear more than once in the header; remove the copies")
        return out
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing_cols:
        out.errors.append(f"{name}: missing required column(s) {', '.join(missing_cols)}; the header is "
                          f"{','.join(header)!r}. Use the official file (columns "
                          f"{','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
        return out
    for c in OPTIONAL_COLUMNS:
        if c not in header:
            out.warnings.append(f"{name}: optional column {c} is missing")
    col = {c: i for i, c in enumerate(header)}

    first_line: dict[str, int] = {}
    lesion_dx: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    records, lines, paths = [], [], []
    for line, fields in rows:
        image_id, lesion_id, dx = (fields[col[c]] for c in ("image_id", "lesion_id", "dx"))
        where = f"{name} line {line} (image_id {image_id!r})"
        records.append(fields)
        lines.append(line)
        paths.append(None)
        for c in REQUIRED_COLUMNS:
            if not fields[col[c]].strip():
                out.errors.append(f"{where}: empty {c}; fill it in or remove the row")
        if not image_id.strip():
            continue
        unsafe = unsafe_name_problem(image_id)
        if unsafe:
            out.errors.append(f"{where}: image_id {unsafe}, so it could point outside the image folders "
                              "(path traversal); image_id must be a bare name like ISIC_0024306")
            continue
        if image_id in first_line:
            out.errors.append(f"{where}: duplicate image_id, first at line {first_line[image_id]}; "
                              "remove one of the rows")
            continue
        first_line[image_id] = line
        if dx.strip() and dx not in CLASSES:
            out.errors.append(f"{where}: unknown dx {dx!r}; it must be one of {', '.join(CLASSES)}")
        if lesion_id.strip():
            lesion_dx[lesion_id][dx].append(line)
        if "age" in col and fields[col["age"]].strip():
            try:
                float(fields[col["age"]])
            except ValueError:
                out.errors.append(f"{where}: age {fields[col['age']]!r} is not a number; fix it or leave it empty")
        files = by_stem.get(image_id, [])
        if not files:
            out.errors.append(f"{where}: no image file {image_id}.jpg (or .jpeg/.png) in "
                              f"{', '.join(rel(d) + '/' for d in image_dirs) or data_dir}; "
                              "put the file there or remove the row")
        elif len(files) > 1:
            out.errors.append(f"{where}: {len(files)} image files match: {', '.join(rel(p) for p in files)}; "
                              "keep only one")
        else:
            paths[-1] = files[0]

    for lesion_id, by_dx in lesion_dx.items():
        if len(by_dx) > 1:
            detail = "; ".join(f"{dx!r} at line(s) {', '.join(map(str, ls))}" for dx, ls in sorted(by_dx.items()))
            out.errors.append(f"{name}: lesion_id {lesion_id!r} has more than one dx ({detail}); "
                              "one lesion has one diagnosis, so fix the wrong rows")

    extra = sorted(p for stem, files in by_stem.items() if stem not in first_line for p in files)
    for p in extra:
        out.errors.append(f"{rel(p)}: image file has no row in {name} ({len(extra)} such file"
                          f"{'s' if len(extra) != 1 else ''} in all); add its row or move it out of the "
                          "image folders (a stray file usually means a mixed or wrong download)")

    if check_images:
        to_check = [(line, p) for line, p in zip(lines, paths) if p is not None]
        workers = min(8, (os.cpu_count() or 1) * 2)
        # PIL releases the GIL while decoding, so threads use every core without pickling arrays around.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = list(pool.map(lambda lp: image_problem(lp[1]), to_check))
        for (line, p), problem in zip(to_check, problems):
            if problem:
                out.errors.append(f"{rel(p)} (line {line} of {name}) {problem}; replace it with a good copy "
                                  "from the original release")

    df = pd.DataFrame(records, columns=header, dtype=str)
    df["path"] = [str(p) if p is not None else "" for p in paths]
    if "age" in df.columns:
        df["age"] = pd.to_numeric(df["age"].where(df["age"].str.strip() != ""), errors="coerce")
    df = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    df.attrs["csv_path"] = str(csv_path)
    df.attrs["image_dirs"] = [str(d) for d in image_dirs]
    out.df = df
    return out


def load_metadata(data_dir: str | Path, check_images: bool = False) -> pd.DataFrame:
    """The HAM10000 metadata with an added ``path`` column (absolute image path), sorted by image_id.

    Raises DatasetError listing every problem (missing/extra/duplicate/unsafe files or rows, unknown dx,
    and with ``check_images`` every image that does not decode fully as RGB). Warnings are logged.
    """
    found = _inspect(data_dir, check_images)
    if found.errors:
        raise DatasetError(f"HAM10000 in {Path(data_dir).expanduser().absolute()} is not usable; fix the problems "
                           "below (`qana data validate` re-checks)", found.errors)
    for w in found.warnings:
        log.warning("%s", w)
    return found.df


def validate(data_dir: str | Path, check_images: bool = True) -> ValidationReport:
    """Check the HAM10000 copy in ``data_dir`` and report every problem; never raises for bad data."""
    start = time.perf_counter()
    found = _inspect(data_dir, check_images)
    report = ValidationReport(errors=found.errors, warnings=found.warnings, n_images=found.n_images,
                              data_dir=str(Path(data_dir).expanduser().absolute()), images_checked=check_images)
    if found.df is not None:
        df = found.df
        report.n_rows = len(df)
        report.n_lesions = int(df["lesion_id"].nunique())
        counts = df["dx"].value_counts()
        report.class_counts = {c: int(counts.get(c, 0)) for c in CLASSES}
        report.class_counts.update({c: int(n) for c, n in counts.items() if c not in CLASSES})
    report.seconds = time.perf_counter() - start
    return report
