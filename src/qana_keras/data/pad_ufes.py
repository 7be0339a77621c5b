"""PAD-UFES-20 (clinical smartphone photos), used as an external test set with HAM10000 labels.

Layout: ``root/metadata.csv`` (26 columns, one row per image, ``img_id`` like ``PAT_46_881_939.png``)
and ``root/images/``. Files are matched by stem, because copies re-encode the PNGs (ours holds
``PAT_46_881_939.jpg``). Unlike HAM10000, a row whose image is absent is expected (partial copies),
so such rows are dropped -- but counted in ``df.attrs["missing_images"]`` and logged, never silently.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from qana_keras.data.checks import DatasetError, unsafe_name_problem
from qana_keras.data.layout import read_table, scan_images
from qana_keras.io import display_path

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"
IMAGES_DIR = "images"
REQUIRED_COLUMNS = ("patient_id", "lesion_id", "diagnostic", "img_id")

# PAD-UFES-20 diagnostic -> HAM10000 class. None means "no HAM class": such rows are kept (with
# ham_dx None) so later work can treat them as a new class or leave them out explicitly.
DIAGNOSTIC_TO_HAM: dict[str, str | None] = {
    # Actinic keratosis is the main member of HAM's akiec (actinic keratoses and intraepithelial carcinoma).
    "ACK": "akiec",
    "BCC": "bcc",  # basal cell carcinoma: the same diagnosis
    "MEL": "mel",  # melanoma: the same diagnosis
    "NEV": "nv",  # nevus: HAM's melanocytic nevi
    # Seborrheic keratosis is one of HAM's benign keratosis-like lesions (with solar lentigo and LPLK).
    "SEK": "bkl",
    # Invasive squamous cell carcinoma is not in HAM10000: akiec holds only actinic keratoses and
    # intraepithelial carcinoma (Bowen's disease). Mapping SCC to akiec would score a model on a class it
    # never saw, so it gets no HAM class.
    "SCC": None,
}


def load_metadata(root: str | Path) -> pd.DataFrame:
    """The PAD-UFES-20 rows that have an image, with ``path`` and ``ham_dx`` added, sorted by img_id.

    Rows whose image file is absent are dropped: their number is in ``df.attrs["missing_images"]`` and
    their img_ids in ``df.attrs["missing_image_ids"]``. Raises DatasetError naming every bad row
    (missing columns or values, unknown diagnostic, unsafe or duplicate img_id, ambiguous files) and
    every image file without a row.
    """
    root = Path(root).expanduser().absolute()
    csv_path, images_dir = root / METADATA_FILE, root / IMAGES_DIR
    hint = (f"put PAD-UFES-20 in {root}: {METADATA_FILE} and the images in {IMAGES_DIR}/ "
            "(see data/README.md)")
    problems: list[str] = []
    header, rows = read_table(csv_path, images_dir, root, hint, problems)
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing_cols:
        raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing_cols)}; use the original "
                           "PAD-UFES-20 metadata.csv")
    col = {c: i for i, c in enumerate(header)}

    by_stem = scan_images(images_dir, root, problems)

    seen: dict[str, int] = {}
    kept, paths, missing = [], [], []
    for line, fields in rows:
        img_id = fields[col["img_id"]]
        where = f"{METADATA_FILE} line {line} (img_id {img_id!r})"
        empty = [c for c in REQUIRED_COLUMNS if not fields[col[c]].strip()]
        if empty:
            problems.append(f"{where}: empty {', '.join(empty)}; fill it in or remove the row")
            continue
        unsafe = unsafe_name_problem(img_id)
        if unsafe:
            problems.append(f"{where}: img_id {unsafe} (path traversal); it must be a bare file name")
            continue
        diagnostic = fields[col["diagnostic"]]
        if diagnostic not in DIAGNOSTIC_TO_HAM:
            problems.append(f"{where}: unknown diagnostic {diagnostic!r}; expected one of "
                            f"{', '.join(DIAGNOSTIC_TO_HAM)}")
        stem = os.path.splitext(img_id)[0]
        if stem in seen:
            problems.append(f"{where}: duplicate image (same stem as line {seen[stem]}); remove one of the rows")
            continue
        seen[stem] = line
        files = by_stem.get(stem, [])
        if not files:
            missing.append(img_id)
        elif len(files) > 1:
            problems.append(f"{where}: {len(files)} files match: {', '.join(p.name for p in files)}; keep one")
        else:
            kept.append(fields)
            paths.append(str(files[0]))
    extra = sorted(p.name for stem, files in by_stem.items() if stem not in seen for p in files)
    problems += [f"{IMAGES_DIR}/{n}: image file has no row in {METADATA_FILE}; add its row or remove it"
                 for n in extra]
    if problems:
        raise DatasetError(f"PAD-UFES-20 in {root} is not usable; fix the problems below", problems)

    df = pd.DataFrame(kept, columns=header, dtype=str)
    df["path"] = paths
    df["ham_dx"] = pd.Series([DIAGNOSTIC_TO_HAM[d] for d in df["diagnostic"]], dtype=object)
    df = df.sort_values("img_id").reset_index(drop=True)
    df.attrs["missing_images"] = len(missing)
    df.attrs["missing_image_ids"] = sorted(missing)
    if missing:
        log.warning("PAD-UFES-20: %d of %d metadata rows have no image in %s and were left out",
                    len(missing), len(missing) + len(df), display_path(images_dir))
    return df
