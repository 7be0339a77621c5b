"""Saliency maps, crop boxes, cached crops, tiling fallback and `qana crop`, on fixtures and tiny real models."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import TINY_QANA as TINY, write_run_fixture

from qana_keras import CLASSES
from qana_keras.config import Config, ModelConfig
from qana_keras.crop.cache import crop_cache_params, load_cached_crops
from qana_keras.crop.geometry import (MASK_DIR, CropParams, box_iou, centred, crop_box, mask_boxes, salient_box,
                                      tile_boxes)
from qana_keras.evaluation.crop_study import apply_fallback, choose_fallback_threshold, combine_views
from qana_keras.data import ham10000
from qana_keras.data.synthetic import SKIN, write_lesion_masks

QUIET = dict(log=lambda *_: None)


def tiny_model(size: int = 32, seed: int = 0):
    import tf_keras as keras

    from qana_keras.models.qana import build_model

    keras.utils.set_random_seed(seed)
    return build_model(ModelConfig(**TINY), input_size=size)


@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    """A 200x150 HAM10000 fixture with masks, a split file and a tiny saved saliency model (with its config)."""
    root = tmp_path_factory.mktemp("crop")
    model_dir, config, data_dir = write_run_fixture(root, 4, size=(200, 150), image_size=32, folder="model")
    boxes = write_lesion_masks(data_dir, MASK_DIR)
    tiny_model().save(model_dir / "qana_float.h5", save_format="h5")
    return {"root": root, "data_dir": data_dir, "boxes": boxes, "config": config, "model": model_dir / "qana_float.h5"}


# --------------------------------------------------------------------------------------------------
# Geometry


def test_salient_box_is_the_thresholded_region_around_the_peak():
    cam = np.zeros((30, 40), np.float32)
    cam[5:10, 5:12] = 0.8  # a weaker region elsewhere
    cam[18:25, 20:31] = 0.9
    cam[21, 25] = 1.0
    assert salient_box(cam, 0.5) == (20, 18, 31, 25)
    assert salient_box(cam, 0.95) == (25, 21, 26, 22)
    assert salient_box(np.full((30, 40), 3.0), 0.5) == (0, 0, 40, 30)  # flat map: no information, whole frame


def test_crop_box_is_square_inside_the_image_and_holds_the_box():
    rng = np.random.default_rng(0)
    params = CropParams(margin=0.15, min_side=0.25)
    for _ in range(300):
        x0, y0 = int(rng.integers(0, 190)), int(rng.integers(0, 140))
        box = (x0, y0, x0 + int(rng.integers(1, 200 - x0 + 1)), y0 + int(rng.integers(1, 150 - y0 + 1)))
        left, top, right, bottom = crop_box(box, 150, 200, params)
        side = right - left
        assert side == bottom - top and 0 <= left and 0 <= top and right <= 200 and bottom <= 150
        assert side >= round(0.25 * 150)
        longer = max(box[2] - box[0], box[3] - box[1])
        if longer * 1.3 <= 150:  # fits with its margin: the whole box is inside the crop
            assert left <= box[0] and top <= box[1] and right >= box[2] and bottom >= box[3]
    assert crop_box((90, 65, 110, 85), 150, 200, CropParams(margin=0.5, min_side=0.1)) == (80, 55, 120, 95)


def test_box_iou_tiles_and_centred_boxes():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert centred((0, 0, 50, 30), 150, 200) == (75, 60, 125, 90)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    tiles = tile_boxes(150, 200, overlap=0.25)
    assert tiles[0] == (0, 0, 125, 94) and tiles[3] == (75, 56, 200, 150)
    covered = np.zeros((150, 200), int)
    for x0, y0, x1, y1 in tiles:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() == 1 and covered[75, 100] == 4  # every pixel seen, the centre by all four


def test_fallback_threshold_is_chosen_where_tiling_helps():
    labels = np.array([0, 1] * 50)
    crop = np.full((100, 2), 0.0)
    combined = np.full((100, 2), 0.0)
    confident = np.arange(100) < 70
    crop[confident, labels[confident]] = 0.9  # confident crops are right
    crop[confident, 1 - labels[confident]] = 0.1
    crop[~confident, 1 - labels[~confident]] = 0.55  # unsure crops are wrong ...
    crop[~confident, labels[~confident]] = 0.45
    combined[np.arange(100), labels] = 0.6  # ... and the tiles fix them
    combined[np.arange(100), 1 - labels] = 0.4
    chosen = choose_fallback_threshold(labels, crop, combined)
    predictions, triggered = apply_fallback(crop, combined, chosen["threshold"])
    assert np.all(predictions == labels) and triggered.sum() == 30
    never = choose_fallback_threshold(labels, crop, crop)  # tiles that change nothing are never worth running
    assert never["threshold"] == 0.0 and never["val_trigger_rate"] == 0.0
    assert combine_views(np.ones((1, 2)), np.zeros((1, 4, 2))) == pytest.approx(np.full((1, 2), 0.2))


# --------------------------------------------------------------------------------------------------
# Saliency maps on tiny real models


def test_head_map_decomposes_the_logits_exactly_and_gradcam_matches_its_gradient():
    from qana_keras.crop.saliency import GradCAM, KerasHeadCAM

    model = tiny_model(seed=1)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    head = KerasHeadCAM(model)
    per_class, logits = head.contributions(images)
    np.testing.assert_allclose(per_class.sum(axis=(1, 2)) + head.bias, logits, rtol=1e-4, atol=1e-5)
    maps, _ = head(images)
    np.testing.assert_allclose(maps, per_class[np.arange(5), :, :, logits.argmax(1)], rtol=1e-6)

    # Grad-CAM read at the head's own input: the gradient of a linear head is its kernel, so the
    # channel weights are the kernel of the predicted class averaged over locations.
    flatten_input = model.get_layer("head/flatten").input.node.layer.name
    cam, cam_logits = GradCAM(model, layer=flatten_input)(images)
    features = head.features.predict(images, verbose=0)[0]
    weights = head.kernel[..., logits.argmax(1)].mean(axis=(0, 1))  # (c, N)
    expected = np.maximum(np.einsum("nhwc,cn->nhw", features, weights), 0)
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cam_logits, logits, rtol=1e-5, atol=1e-6)
    assert GradCAM(model).layer == "stage2/relu"  # default: the last stage before its pool (16x16 here)
    assert GradCAM(model)(images)[0].shape == (5, 16, 16) and maps.shape == (5, *head.kernel.shape[:2])


@pytest.mark.slow  # quantize + convert: ~30 s idle, minutes under load
def test_akida_head_map_reproduces_the_akida_logits(tmp_path):
    """The forward-only map from the Akida feature map and the int8 dense kernel sums to the Akida logits."""
    from qana_keras.conversion.quantize import quantize_for_akida, to_akida
    from qana_keras.crop.saliency import AkidaHeadCAM, KerasHeadCAM
    from qana_keras.runtime.load import akida_logits

    model = tiny_model(size=32, seed=2)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    qmodel, _ = quantize_for_akida(model, images, "qana", batch_size=8, **QUIET)
    ak = to_akida(qmodel, strict=True, variant="qana", **QUIET)
    ak.save(str(tmp_path / "tiny.fbz"))
    cam = AkidaHeadCAM(tmp_path / "tiny.fbz")  # checks itself against the full model
    maps, logits = cam(images)
    np.testing.assert_allclose(logits, akida_logits(ak, images), rtol=1e-5, atol=1e-6)
    assert maps.shape == (8, *cam.kernel.shape[:2])
    float_maps, float_logits = KerasHeadCAM(model)(images)
    agree = logits.argmax(1) == float_logits.argmax(1)
    if agree.sum() >= 4:  # same class: the integer map is a quantized copy of the float one
        corr = np.corrcoef(maps[agree].ravel(), float_maps[agree].ravel())[0, 1]
        assert corr > 0.8


# --------------------------------------------------------------------------------------------------
# Cached crops for training


def test_mask_boxes_find_the_lesion_and_mask_crops_are_cached(ham):
    meta = ham10000.load_metadata(ham["data_dir"])
    shapes = np.tile([150, 200], (len(meta), 1))
    raw, crops, empty = mask_boxes(meta["image_id"].tolist(), ham["data_dir"] / MASK_DIR, shapes, CropParams())
    assert not empty.any()
    for image_id, box in zip(meta["image_id"], raw):
        assert box_iou(box, ham["boxes"][image_id]) > 0.97  # 600x450 masks scaled back to the 200x150 image
    data = ham["config"].data
    data.crop = "mask"
    logs = []
    first = load_cached_crops(meta, data, log=logs.append)
    again = load_cached_crops(meta, data, log=logs.append)
    assert first.shape == (len(meta), 32, 32, 3) and first.dtype == np.uint8
    assert "made" in logs[0] and "loaded" in logs[1] and np.array_equal(first, again)
    # The crop holds mostly lesion: its centre pixel is the blob colour, not skin.
    centre = first[:, 16, 16].astype(float)
    assert np.mean(np.linalg.norm(centre - np.array(SKIN), axis=1) > 60) > 0.9
    data.crop = "none"


def test_saliency_crop_key_follows_the_model_and_errors_name_what_is_missing(ham, tmp_path):
    from qana_keras.data.cache import cache_key

    meta = ham10000.load_metadata(ham["data_dir"])
    data = Config().data
    data.data_dir, data.cache_dir, data.crop = str(ham["data_dir"]), str(tmp_path), "saliency"
    with pytest.raises(ValueError, match="data.crop_model"):
        crop_cache_params(meta, data)
    data.crop_model = str(ham["model"])
    other = tmp_path / "other.h5"
    tiny_model(seed=5).save(other, save_format="h5")
    key = cache_key(meta["path"].tolist(), 32, crop_cache_params(meta, data))
    data.crop_model = str(other)
    assert cache_key(meta["path"].tolist(), 32, crop_cache_params(meta, data)) != key
    data.crop_threshold = 0.4
    assert cache_key(meta["path"].tolist(), 32, crop_cache_params(meta, data)) != key
    assert cache_key(meta["path"].tolist(), 32) == cache_key(meta["path"].tolist(), 32, None)
    data.crop, data.mask_dir = "mask", str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        crop_cache_params(meta, data)
    data.crop = "middle"
    with pytest.raises(ValueError, match="unknown data.crop"):
        crop_cache_params(meta, data)


def test_training_crops_are_the_inference_crops(ham, tmp_path):
    """The cached training crops (data.crop=saliency) are exactly what the evaluation/deployment path cuts."""
    from qana_keras.evaluation.crop_study import crop_views
    from qana_keras.crop.saliency import load_saliency

    meta = ham10000.load_metadata(ham["data_dir"])
    data = Config().data
    data.data_dir, data.cache_dir, data.image_size = str(ham["data_dir"]), str(tmp_path), 32
    data.crop, data.crop_model = "saliency", str(ham["model"])
    cached = load_cached_crops(meta, data, **QUIET)
    views = crop_views(meta, load_saliency(ham["model"], "head"), 32, CropParams(), ham["data_dir"] / MASK_DIR,
                       str(tmp_path), **QUIET)
    assert np.array_equal(cached, views["saliency_crop"])
    assert not np.array_equal(cached, views["whole"])


@pytest.mark.slow  # a 1-epoch training: ~20 s idle, a minute under load
def test_train_on_saliency_crops_from_the_command_line(ham, monkeypatch):
    """`qana train --set data.crop=saliency` trains (1 epoch, tiny) on crops cached under a saliency-model key."""
    from qana_keras.cli import main
    from qana_keras.io import read_json

    root = ham["root"]
    config_file = root / "tiny_crop.yaml"
    config = ham["config"]
    config.train.epochs, config.train.batch_size, config.train.warmup_epochs = 1, 16, 0
    config.save(config_file)
    monkeypatch.setenv("QANA_CACHE_DIR", config.data.cache_dir)
    code = main(["train", "--config", str(config_file), "--run", str(root / "crop_run"),
                 "--set", "data.crop=saliency", "--set", f"data.crop_model={ham['model']}"])
    assert code == 0
    saved = read_json(root / "crop_run" / "metrics.json")
    assert saved["test"]["n_images"] > 0
    assert list((root / "cache").glob("ham10000_saliencycrop_32px_*.npy"))
    from qana_keras.config import load_config

    assert load_config(root / "crop_run" / "config.yaml").data.crop_model == str(ham["model"])
    # `qana evaluate` preprocesses as the model was trained: the same crops, so the same test figures.
    from qana_keras.evaluation.evaluate import evaluate_model

    evaluation = evaluate_model(root / "crop_run" / "qana_float.h5", ham["data_dir"], split="test", n_boot=10,
                                log=lambda *_: None)
    assert evaluation["crop"] == "saliency" and evaluation["n_images"] == saved["test"]["n_images"]
    assert evaluation["top1"] == pytest.approx(saved["test"]["top1"])
    assert evaluation["macro_f1"] == pytest.approx(saved["test"]["macro_f1"])


# --------------------------------------------------------------------------------------------------
# `qana crop`: evaluation JSON and overlays


def test_qana_crop_writes_figures_and_overlays(ham, tmp_path):
    from qana_keras.cli import main

    config = ham["config"]
    out = tmp_path / "crop.json"
    code = main(["crop", "--model", str(ham["model"]), "--data", str(ham["data_dir"]), "--split-file",
                 config.data.split_file, "--cache-dir", config.data.cache_dir, "--json", str(out),
                 "--overlays", str(tmp_path / "png"), "--per-class", "1", "--n-boot", "10"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith(f"qana crop --model {ham['model']} ")
    test = report["test"]
    assert set(test["variants"]) == {"whole", "saliency_crop", "saliency_crop_tiling", "mask_crop", "centre_crop"}
    assert 0.0 <= test["tiling"]["trigger_rate"] <= 1.0
    assert test["tiling"]["threshold"] == report["fallback"]["threshold"]
    iou = test["iou"]["salient_box_vs_mask_box"]
    assert iou["n"] == test["n_images"] and 0.0 <= iou["mean"] <= 1.0
    for v in ("saliency_crop", "saliency_crop_tiling", "mask_crop"):
        p = test["paired_vs_whole"][v]["macro_f1"]
        assert p["low"] <= p["high"]
    if test["tiling"]["triggered"] == 0:
        assert test["variants"]["saliency_crop_tiling"]["top1"] == test["variants"]["saliency_crop"]["top1"]
    pngs = sorted(p.name for p in (tmp_path / "png").glob("crop_overlays_*.png"))
    assert pngs == [f"crop_overlays_{c}.png" for c in CLASSES]
    assert main(["crop", "--model", str(ham["model"])]) == 2  # nothing asked for
