"""HAM10000: find the images, read and check the metadata, decode images strictly.

Nothing is dropped silently: every problem is reported with the file or CSV line it comes from,
and :func:`load_metadata` refuses to return a table that has any.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from qana_keras import CLASSES

log = logging.getLogger(__name__)

METADATA_FILE = "HAM10000_metadata.csv"
PART_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
SINGLE_DIR = "images"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
OPTIONAL_COLUMNS = ("dx_type", "age", "sex", "localization")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_LISTED = 20  # problems shown in an exception message; all of them are in ``.problems``

_MODE_NAMES = {"L": "grayscale", "LA": "grayscale with alpha", "1": "black and white", "P": "palette",
               "RGBA": "RGB with alpha", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale",
               "F": "float grayscale", "YCbCr": "YCbCr"}


class DatasetError(ValueError):
    """A problem with a dataset on disk.

    ``problems`` lists every offending file or row (each names it and says what to do); the message
    shows the first ``MAX_LISTED`` and how many there are.
    """

    def __init__(self, headline: str, problems: list[str] | tuple[str, ...] = ()):
        self.headline = headline
        self.problems = list(problems)
        super().__init__(format_problems(headline, self.problems))


def format_problems(headline: str, problems: list[str], limit: int = MAX_LISTED) -> str:
    """``headline`` followed by the first ``limit`` problems, one per line, and a count of the rest."""
    if not problems:
        return headline
    lines = [f"{headline} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
    lines += [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (all are listed in the exception's .problems)")
    return "\n".join(lines)


def where_to_put(data_dir: str | Path) -> str:
    """The hint every 'not found' error ends with."""
    return (f"Put the HAM10000 release in {data_dir}: {METADATA_FILE} and the images in "
            f"{PART_DIRS[0]}/ and {PART_DIRS[1]}/ (or in one {SINGLE_DIR}/ folder). "
            "`qana data download` fetches them (see data/README.md), "
            "or set QANA_DATA_DIR to a folder that already has them.")


def unsafe_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name (a path-traversal risk), or None if it is one."""
    if "\0" in name:
        return "contains a NUL byte"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.'"
    if os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):  # the latter: a Windows drive like C:
        return "is an absolute path"
    return None


def link_outside_problem(path: str | Path, root: str | Path) -> str | None:
    """Why ``path`` is refused as a symbolic link out of the data folder ``root``, or None if it stays inside.

    A link out of the data folder makes the data set depend on files nobody checks in it; they are
    refused rather than followed silently.
    """
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return (f"is a symbolic link to {real}, outside the data folder {real_root}; copy the file into the "
            "folder (or point the data folder at the real data)")


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


# ---------------------------------------------------------------------------------------------------
# Image decoding


class _BadImage(Exception):
    """Internal: the reason an image file is unusable."""


# Bytes placed before a JPEG's end marker by _jpeg_ends_early: no 0xFF in them, so a decoder reads them as
# image data (never as a marker).
_PROBE = bytes(range(1, 255)) * 4


def _jpeg_ends_early(data: bytes, pixels: np.ndarray) -> bool:
    """True when the JPEG ``data`` (decoded to ``pixels``) has fewer coded blocks than the image needs.

    libjpeg fills the blocks missing after a premature end marker with zeros and only warns, which PIL
    and OpenCV ignore, so such a file decodes without error. A complete JPEG's pixels do not depend on
    bytes after its last block; a partial one decodes the probe bytes as its missing blocks and changes.
    """
    end = data.rstrip(b"\0")
    probed = end[:-2] + _PROBE + end[-2:]  # end[-2:] is FFD9 (checked before)
    try:
        with Image.open(io.BytesIO(probed)) as img:
            img.load()
            other = np.asarray(img)
    except Exception:  # the probe bytes made the missing blocks undecodable: they were being read
        return True
    return other.shape != pixels.shape or not np.array_equal(other, pixels)


def _next_marker(data: bytes, i: int) -> int:
    """Index of the first marker at or after ``i`` in entropy-coded data (skipping FF00 stuffing and RSTn)."""
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            return len(data)
        if data[i + 1] == 0 or 0xD0 <= data[i + 1] <= 0xD7:
            i += 2
            continue
        return i


def _progressive_scans_missing(data: bytes) -> bool:
    """True when a progressive JPEG lacks scans: some coefficient of some component never gets its last bit.

    A progressive file cut between two scans decodes (blurrier) without even a warning, so the scan
    headers are checked: a complete file brings every coefficient 0-63 of every component to full
    precision (a scan with Al = 0).
    """
    i, components, done = 2, [], set()
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:i + 2 + length]
        if marker in (0xC0, 0xC1, 0xC3):
            return False  # sequential: the probe of _jpeg_ends_early covers it
        if marker == 0xC2 and len(segment) >= 6:
            components = [segment[6 + 3 * c] for c in range(segment[5]) if 6 + 3 * c < len(segment)]
        if marker == 0xDA and segment:
            n = segment[0]
            if len(segment) >= 4 + 2 * n:
                ids = [segment[1 + 2 * c] for c in range(n)]
                ss, se, approximation = segment[1 + 2 * n], segment[2 + 2 * n], segment[3 + 2 * n]
                if approximation & 0x0F == 0:
                    done.update((c, k) for c in ids for k in range(ss, se + 1))
            i = _next_marker(data, i + 2 + length)
            continue
        i += 2 + length
    return bool(components) and any((c, k) not in done for c in components for k in range(64))


def _decode(path: Path) -> np.ndarray:
    """Decode ``path`` completely into HxWx3 uint8 RGB, or raise _BadImage saying why not."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _BadImage(f"cannot be read ({e.strerror or e})") from None
    if not data:
        raise _BadImage("is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode != "RGB":
                name = _MODE_NAMES.get(img.mode, "not RGB")
                raise _BadImage(f"is not RGB: mode {img.mode} ({name}); convert it to 3-channel RGB "
                                "or replace it with the original")
            # PIL decodes what it can of a truncated JPEG without complaint when a decoder leaves the
            # tail unread, so the end-of-image marker is checked too. Zero padding after it is legal.
            if img.format == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
                raise _BadImage("is truncated: the JPEG does not end with the end-of-image marker FFD9")
            img.load()  # the full decode; raises on truncated or corrupt data
            array = np.array(img, dtype=np.uint8)
        if img.format == "JPEG" and (_jpeg_ends_early(data, array) or _progressive_scans_missing(data)):
            raise _BadImage("is truncated: its image data stops before the last block (a partial file that "
                            "still ends with the JPEG end marker)")
    except _BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise _BadImage("cannot be decoded: not a recognisable image file (corrupt, or not JPEG/PNG)") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise _BadImage(f"cannot be decoded ({type(e).__name__}: {e})") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise _BadImage(f"decodes to shape {array.shape}, not HxWx3")
    return array


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file completely into an HxWx3 uint8 RGB array.

    Raises DatasetError naming the file when it is unreadable, corrupt, truncated or not RGB.
    """
    path = Path(path)
    try:
        return _decode(path)
    except _BadImage as e:
        raise DatasetError(f"{path} {e}; replace it with a good copy from the original release "
                           "(re-download or re-extract it)") from None


def _image_problem(path: Path) -> str | None:
    try:
        _decode(path)
    except _BadImage as e:
        return str(e)
    return None


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
        lines = [f"HAM10000 in {self.data_dir}: {status}",
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


def read_csv_rows(csv_path: Path, errors: list[str]) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """Header and ``(line, fields)`` rows of a CSV, counting the header as line 1.

    The csv module (not pandas) is used so each row keeps its true line number, even past blank lines.
    Problems are appended to ``errors``; returns None when the file cannot be read at all.
    """
    name = csv_path.name
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                errors.append(f"{name} is empty; replace it with the original file")
                return None
            rows = []
            for fields in reader:
                line = reader.line_num
                if not any(v.strip() for v in fields):
                    continue  # blank line
                if len(fields) != len(header):
                    errors.append(f"{name} line {line}: {len(fields)} fields but the header has {len(header)}; "
                                  "fix the row (a stray comma or quote?)")
                    continue
                rows.append((line, fields))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        errors.append(f"{csv_path} cannot be read as UTF-8 CSV ({e}); replace it with the original file")
        return None
    return header, rows


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
            problems = list(pool.map(lambda lp: _image_problem(lp[1]), to_check))
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
