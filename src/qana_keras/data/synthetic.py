"""Small synthetic data sets in the official HAM10000, PAD-UFES-20 and ISIC 2018/2019 layouts, for smoke runs
(the notebooks' quick mode) and the tests.

Images are coloured blobs on a skin-toned background; the blob colour depends on the class, so a
model can learn them in a few steps.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from qana_keras import CLASSES
from qana_keras.data.ham10000 import METADATA_FILE, PART_DIRS, load_metadata
from qana_keras.data.images import read_rgb

SKIN = (225, 180, 160)  # the background colour of every image
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
FIRST_IMAGE = 24306  # the official ids start at ISIC_0024306

# One distinct blob colour (RGB) per class; far apart so even a tiny model separates them.
CLASS_COLORS = {
    "akiec": (200, 40, 40), "bcc": (40, 200, 40), "bkl": (40, 40, 200), "df": (200, 200, 40),
    "mel": (20, 20, 20), "nv": (140, 70, 20), "vasc": (200, 40, 200),
}


def blob_image(rng: np.random.Generator, color: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    """An HxWx3 uint8 image: a noisy ellipse of ``color`` on a skin-toned background; size is (width, height)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
    rx, ry = rng.uniform(0.2, 0.35) * w, rng.uniform(0.2, 0.35) * h
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    image = np.empty((h, w, 3), np.float32)
    image[:] = np.array(SKIN) + rng.normal(0, 8, 3)
    image[inside] = color
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_ham10000_fixture(root: Path, n_lesions_per_class: int = 4,
                           images_per_lesion: int | tuple[int, int] = (1, 2),
                           size: tuple[int, int] = (200, 150), layout: str = "two_parts", seed: int = 0,
                           classes: tuple[str, ...] = CLASSES, image_format: str = "jpg") -> Path:
    """Write a small HAM10000 copy into ``root`` and return ``root``.

    ``images_per_lesion`` is a count or an inclusive (min, max) range drawn per lesion; ``size`` is
    (width, height); ``layout`` is "two_parts" (HAM10000_images_part_1/ and _2/, split in the middle
    like the release) or "single" (one images/ folder). Rows are shuffled, as in the real file.
    Deterministic for a given seed.
    """
    if layout not in ("two_parts", "single"):
        raise ValueError(f"layout must be 'two_parts' or 'single', not {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    lo, hi = (images_per_lesion, images_per_lesion) if isinstance(images_per_lesion, int) else images_per_lesion
    rows = []
    lesion = 0
    for dx in classes:
        for _ in range(n_lesions_per_class):
            lesion += 1
            age = f"{5 * int(rng.integers(4, 18))}.0"
            sex = str(rng.choice(["male", "female"]))
            site = str(rng.choice(["back", "trunk", "face", "lower extremity"]))
            for _ in range(int(rng.integers(lo, hi + 1))):
                rows.append({"lesion_id": f"HAM_{lesion:07d}", "dx": dx, "dx_type": "histo",
                             "age": age, "sex": sex, "localization": site})
    for i, row in enumerate(rows):
        row["image_id"] = f"ISIC_{FIRST_IMAGE + i:07d}"
    dirs = [root / d for d in PART_DIRS] if layout == "two_parts" else [root / "images"]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    half = (len(rows) + 1) // 2
    for i, row in enumerate(rows):
        folder = dirs[0] if layout == "single" or i < half else dirs[1]
        image = blob_image(rng, CLASS_COLORS.get(row["dx"], (128, 128, 128)), size)
        Image.fromarray(image).save(folder / f"{row['image_id']}.{image_format}", quality=90)
    order = rng.permutation(len(rows))
    with open(root / METADATA_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HAM_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[i] for i in order)
    return root


PAD_COLUMNS = ["patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age",
               "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water",
               "has_sewage_system", "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic", "itch",
               "grew", "hurt", "changed", "bleed", "elevation", "img_id", "biopsed"]

PAD_COLORS = {"ACK": CLASS_COLORS["akiec"], "BCC": CLASS_COLORS["bcc"], "MEL": CLASS_COLORS["mel"],
              "NEV": CLASS_COLORS["nv"], "SEK": CLASS_COLORS["bkl"], "SCC": (90, 90, 90)}


def write_pad_ufes_fixture(root: Path, per_diagnostic: int = 3, missing_per_diagnostic: int = 1,
                           size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """Write a small PAD-UFES-20 copy (metadata.csv + images/) into ``root`` and return ``root``.

    Per diagnostic, ``per_diagnostic`` rows have an image (stored as .jpg while img_id says .png, like
    the partial copy) and ``missing_per_diagnostic`` more rows have none.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for diagnostic, color in PAD_COLORS.items():
        for k in range(per_diagnostic + missing_per_diagnostic):
            n += 1
            row = dict.fromkeys(PAD_COLUMNS, "")
            row.update(patient_id=f"PAT_{n}", lesion_id=str(1000 + n), age=str(int(rng.integers(20, 90))),
                       fitspatrick=str(int(rng.integers(1, 7))), region="ARM", diagnostic=diagnostic,
                       img_id=f"PAT_{n}_{1000 + n}_{100 + n}.png", biopsed="True")
            rows.append(row)
            if k < per_diagnostic:
                stem = row["img_id"][:-4]
                Image.fromarray(blob_image(rng, color, size)).save(root / "images" / f"{stem}.jpg", quality=95)
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PAD_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_isic2018_fixture(root: Path, per_class: int = 2, size: tuple[int, int] = (64, 64),
                           seed: int = 0) -> tuple[Path, Path]:
    """Write an ISIC 2018 Task 3 style folder of images and one-hot ground truth; returns (images_dir, csv)."""
    root = Path(root)
    images = root / "ISIC2018_Task3_Images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    columns = ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    lines = [",".join(columns)]
    n = 0
    for dx in CLASSES:
        for _ in range(per_class):
            image_id = f"ISIC_{34321 + n:07d}"
            n += 1
            Image.fromarray(blob_image(rng, CLASS_COLORS[dx], size)).save(images / f"{image_id}.jpg", quality=90)
            lines.append(",".join([image_id] + ["1.0" if c.lower() == dx else "0.0" for c in columns[1:]]))
    (images / "LICENSE.txt").write_text("fixture\n")
    gt = root / "ISIC2018_Task3_GroundTruth.csv"
    gt.write_text("\n".join(lines) + "\n")
    return images, gt


ISIC2019_COLUMNS = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]

ISIC2019_TO_HAM = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}


def write_isic2019_fixture(root: Path, rows: list[tuple[str, str, str]], size: tuple[int, int] = (48, 48),
                           seed: int = 0) -> Path:
    """An ISIC 2019 training-layout folder: ``rows`` of (image id as listed, ISIC class column, lesion_id or "").

    Every listed image gets a file named by its listed id (with any ``_downsampled`` suffix). Returns ``root``.
    """
    root = Path(root)
    images = root / "ISIC_2019_Training_Input"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth, meta = [",".join(ISIC2019_COLUMNS)], ["image,age_approx,anatom_site_general,lesion_id,sex"]
    for image, column, lesion in rows:
        color = CLASS_COLORS.get(ISIC2019_TO_HAM.get(column, ""), (128, 128, 128))
        Image.fromarray(blob_image(rng, color, size)).save(images / f"{image}.jpg", quality=90)
        truth.append(",".join([image] + ["1.0" if c == column else "0.0" for c in ISIC2019_COLUMNS[1:]]))
        meta.append(f"{image},45,back,{lesion},female")
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(truth) + "\n")
    (root / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(meta) + "\n")
    return root


def write_lesion_masks(data_dir: str | Path, mask_dir: str, scale: int = 3) -> dict:
    """Masks of the blobs of a ``write_ham10000_fixture`` copy in the official layout (``data_dir/mask_dir``, one
    ``<image_id>_segmentation.png`` per image, 0/255, ``scale`` times the image size); returns the true boxes
    (x0, y0, x1, y1) by image id."""
    import cv2

    data_dir = Path(data_dir)
    meta = load_metadata(data_dir)
    out_dir = data_dir / mask_dir
    out_dir.mkdir(exist_ok=True)
    boxes = {}
    for image_id, path in zip(meta["image_id"], meta["path"]):
        image = read_rgb(path).astype(np.float32)
        mask = (np.linalg.norm(image - np.array(SKIN), axis=2) > 60).astype(np.uint8) * 255
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # JPEG speckle
        ys, xs = np.nonzero(mask)
        boxes[image_id] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        big = cv2.resize(mask, (mask.shape[1] * scale, mask.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(out_dir / f"{image_id}_segmentation.png"), big)
    return boxes
