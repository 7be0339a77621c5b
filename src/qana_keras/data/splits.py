"""Lesion-level train/val/test splits: all images of one lesion stay in one split.

Several HAM10000 images often show the same lesion; splitting by image would put near-copies of a
test image into training and inflate the test score. Splits are grouped by ``lesion_id`` and
stratified by ``dx`` so the rare classes (df, vasc) appear in every split.
"""
from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from qana_keras import CLASSES
from qana_keras.data.checks import DatasetError, read_csv_rows
from qana_keras.io import atomic_path

SPLITS = ("train", "val", "test")
COLUMNS = ("image_id", "lesion_id", "dx", "split")
_REMAKE = "re-create it with `qana data split` (or fix the rows named)"


def _n_folds(val_fraction: float, test_fraction: float, limit: int) -> tuple[int, int, int]:
    """(folds, test folds, val folds): the fewest equal folds whose multiples best match both fractions.

    0.15/0.15 gives 20 folds of 5 %, 3 for test and 3 for val, so the sizes land on 70/15/15. ``limit``
    caps the folds for tiny data sets (StratifiedGroupKFold needs no more folds than lesions, and a
    class with at least as many images as folds).
    """
    best = None
    for k in range(3, max(3, min(100, limit)) + 1):
        t, v = max(1, round(test_fraction * k)), max(1, round(val_fraction * k))
        if t + v >= k:
            continue
        err = abs(test_fraction * k - t) / k + abs(val_fraction * k - v) / k
        if best is None or err < best[0] - 1e-12:
            best = (err, k, t, v)
    if best is None:
        raise DatasetError(f"too little data to split {1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/"
                           f"{test_fraction:.0%} into lesion groups")
    return best[1:]


def _check_meta(meta: pd.DataFrame) -> None:
    missing = [c for c in ("image_id", "lesion_id", "dx") if c not in meta.columns]
    if missing:
        raise DatasetError(f"metadata lacks column(s) {missing}; pass the table from ham10000.load_metadata")
    problems = []
    dupes = meta["image_id"][meta["image_id"].duplicated()]
    problems += [f"image_id {i!r} appears more than once" for i in sorted(set(dupes))]
    per_lesion = meta.groupby("lesion_id")["dx"].nunique()
    problems += [f"lesion_id {lesion!r} has more than one dx" for lesion in per_lesion[per_lesion > 1].index]
    if problems:
        raise DatasetError("cannot split this metadata; run `qana data validate` and fix it", problems)


def make_lesion_split(meta: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15,
                      seed: int = 42) -> pd.DataFrame:
    """Assign every image to train/val/test, grouped by lesion_id and stratified by dx.

    sklearn's StratifiedGroupKFold cuts the lesions into k equal folds (k = 20 for 15 %/15 %); the first
    folds become test, the next val, the rest train. If a class then misses from a split (only in tiny
    data sets), its smallest lesion is moved there from the split that has the most lesions of that
    class. Deterministic for a given table and seed; the row order of ``meta`` does not matter.
    Returns columns image_id, lesion_id, dx, split, sorted by image_id.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                         "and sum to less than 1")
    _check_meta(meta)
    df = meta[["image_id", "lesion_id", "dx"]].astype(str).sort_values("image_id").reset_index(drop=True)
    too_few = {c: n for c, n in df.groupby("dx")["lesion_id"].nunique().items() if n < len(SPLITS)}
    if too_few:
        raise DatasetError("every class needs at least 3 lesions, one for each of train/val/test",
                           [f"class {c!r} has {n} lesion(s)" for c, n in sorted(too_few.items())])

    limit = min(df["lesion_id"].nunique(), int(df["dx"].value_counts().max()))
    k, n_test, n_val = _n_folds(val_fraction, test_fraction, limit)
    fold_split = ["test"] * n_test + ["val"] * n_val + ["train"] * (k - n_test - n_val)
    split = np.empty(len(df), dtype=object)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": expected for rare classes; the
        # repair pass below guarantees each class in each split.
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        for fold, (_, idx) in enumerate(cv.split(df, df["dx"], groups=df["lesion_id"])):
            split[idx] = fold_split[fold]
    df["split"] = split
    df.attrs["moved_lesions"] = _repair(df)
    return df[list(COLUMNS)]


def _repair(df: pd.DataFrame) -> int:
    """Move single lesions so every class is in every split; returns how many were moved."""
    moved = 0
    for dx in sorted(df["dx"].unique()):
        rows = df[df["dx"] == dx]
        for target in ("test", "val", "train"):
            lesions = rows.groupby("split")["lesion_id"].unique()
            if target in lesions.index:
                continue
            donor = max((s for s in lesions.index if len(lesions[s]) > 1),
                        key=lambda s: (len(lesions[s]), s), default=None)
            if donor is None:  # cannot happen with >= 3 lesions per class; kept as a guard
                raise DatasetError(f"class {dx!r}: cannot put a lesion in every split")
            sizes = rows[rows["split"] == donor].groupby("lesion_id").size()
            lesion = sorted(sizes.items(), key=lambda kv: (kv[1], kv[0]))[0][0]
            df.loc[df["lesion_id"] == lesion, "split"] = target
            rows = df[df["dx"] == dx]
            moved += 1
    return moved


def split_csv_text(df: pd.DataFrame) -> str:
    """The split as CSV text (header, LF, sorted by image_id): the same split gives the same text."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"split table lacks column(s) {missing}; expected {', '.join(COLUMNS)}")
    out = df[list(COLUMNS)].astype(str).sort_values("image_id").reset_index(drop=True)
    return out.to_csv(index=False, lineterminator="\n")


def write_split(df: pd.DataFrame, path: str | Path) -> None:
    """Write the split atomically as CSV (see split_csv_text)."""
    text = split_csv_text(df)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_split(path: str | Path, meta: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read and check a split file; with ``meta``, also check it covers exactly those images.

    Raises DatasetError naming every bad row: bad columns or split values, duplicate images, a lesion
    in two splits, and (with ``meta``) images missing on either side or disagreeing dx/lesion_id.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file {path} not found; create it with `qana data split`")
    problems: list[str] = []
    parsed = read_csv_rows(path, problems)
    if parsed is None:
        raise DatasetError(f"{path} is unreadable; {_REMAKE}", problems)
    header, rows = parsed
    if header != list(COLUMNS):
        raise DatasetError(f"{path}: header is {','.join(header)!r}, expected {','.join(COLUMNS)!r}; {_REMAKE}")
    name = path.name
    seen: dict[str, int] = {}
    lesion_splits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    records, lines = [], []
    for line, (image_id, lesion_id, dx, split) in rows:
        where = f"{name} line {line} (image_id {image_id!r})"
        if not (image_id and lesion_id and dx and split):
            problems.append(f"{where}: empty value")
            continue
        if split not in SPLITS:
            problems.append(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if dx not in CLASSES:
            problems.append(f"{where}: unknown dx {dx!r}")
        if image_id in seen:
            problems.append(f"{where}: duplicate image_id, first at line {seen[image_id]}")
            continue
        seen[image_id] = line
        lesion_splits[lesion_id][split].append(line)
        records.append((image_id, lesion_id, dx, split))
        lines.append(line)
    for lesion_id, by_split in sorted(lesion_splits.items()):
        if len(by_split) > 1:
            detail = "; ".join(f"{s} at line(s) {', '.join(map(str, ls))}" for s, ls in sorted(by_split.items()))
            problems.append(f"{name}: lesion_id {lesion_id!r} is in more than one split ({detail}), "
                            "which leaks it between training and evaluation")
    df = pd.DataFrame(records, columns=list(COLUMNS), dtype=str)

    if meta is not None:
        line_of = dict(zip(df["image_id"], lines))
        known = meta.set_index("image_id")[["lesion_id", "dx"]].astype(str)
        for image_id in sorted(set(known.index) - set(df["image_id"])):
            problems.append(f"{name}: image_id {image_id!r} is in the metadata but not in the split")
        for image_id in sorted(set(df["image_id"]) - set(known.index)):
            problems.append(f"{name} line {line_of[image_id]} (image_id {image_id!r}): not in the metadata")
        both = df.join(known, on="image_id", how="inner", rsuffix="_meta")
        for r in both.itertuples(index=False):
            for c in ("lesion_id", "dx"):
                if getattr(r, c) != getattr(r, c + "_meta"):
                    problems.append(f"{name} line {line_of[r.image_id]} (image_id {r.image_id!r}): {c} "
                                    f"{getattr(r, c)!r} but the metadata says {getattr(r, c + '_meta')!r}")
    if problems:
        raise DatasetError(f"split file {path} does not fit; {_REMAKE}", problems)
    return df.sort_values("image_id").reset_index(drop=True)


def split_summary(df: pd.DataFrame) -> dict:
    """Per split: images, lesions and class counts; plus ``shared_lesions``, lesions in more than one split (must be 0)."""
    out: dict = {}
    for s in SPLITS:
        part = df[df["split"] == s]
        counts = Counter(part["dx"])
        classes = {c: int(counts.get(c, 0)) for c in CLASSES}
        classes.update({c: int(n) for c, n in sorted(counts.items()) if c not in CLASSES})
        out[s] = {"images": int(len(part)), "lesions": int(part["lesion_id"].nunique()), "classes": classes}
    out["shared_lesions"] = int((df.groupby("lesion_id")["split"].nunique() > 1).sum())
    return out
