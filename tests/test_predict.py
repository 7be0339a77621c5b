"""`qana predict` on the shared tiny Akida model and its float Keras model; `qana --version`."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from fixtures import CLASS_COLORS, blob_image
from PIL import Image

from qana_keras import CLASSES
from qana_keras.cli import main


@pytest.fixture
def image_folder(tmp_path):
    """Two synthetic lesion photos, one text file and one corrupt JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, dx in (("a.jpg", "mel"), ("b.png", "nv")):
        Image.fromarray(blob_image(rng, CLASS_COLORS[dx], (200, 150))).save(folder / name)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def _fbz_with_classes(tmp_path, tiny_qana, classes=None):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    fbz = model_dir / "qana.fbz"
    shutil.copy(tiny_qana.fbz, fbz)
    if classes is not None:
        (model_dir / "classes.json").write_text(json.dumps({"classes": classes}))
    return fbz


def test_predict_folder_on_akida_names_skipped_files(tmp_path, tiny_qana, image_folder, capsys):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    fbz = _fbz_with_classes(tmp_path, tiny_qana)
    out_csv, out_json = tmp_path / "out" / "p.csv", tmp_path / "out" / "p.json"
    code = main(["predict", str(image_folder), "--model", str(fbz), "--csv", str(out_csv), "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 1  # some files were skipped
    table = captured.out.strip().splitlines()
    assert table[0].split()[:3] == ["file", "predicted", "prob"]
    assert [line.split()[0] for line in table[1:]] == ["a.jpg", "b.png"]
    assert all(line.split()[1] in CLASSES for line in table[1:])
    assert "skipped" in captured.err and "notes.txt" in captured.err and "not an image file" in captured.err
    assert "broken.jpg" in captured.err

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.jpg", "b.png"]
    for r in rows:
        probabilities = [float(r[f"p_{c}"]) for c in CLASSES]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert float(r["probability"]) == pytest.approx(max(probabilities), abs=1e-6)
        assert r["top3"].split(";")[0].split(":")[0] == r["predicted"]
    report = json.loads(out_json.read_text())
    assert report["image_size"] == 16
    assert sorted(s["file"].rsplit("/", 1)[-1] for s in report["skipped"]) == ["broken.jpg", "notes.txt"]
    assert len(report["predictions"][0]["top3"]) == 3


def test_predict_single_image_exit_0_and_classes_json(tmp_path, tiny_qana, image_folder, capsys):
    names = list(reversed(CLASSES))  # a run whose outputs are in another order: the names must follow classes.json
    fbz = _fbz_with_classes(tmp_path, tiny_qana, names)
    out_json = tmp_path / "p.json"
    assert main(["predict", str(image_folder / "a.jpg"), "--model", str(fbz), "--json", str(out_json)]) == 0
    row = json.loads(out_json.read_text())["predictions"][0]
    assert list(row["probabilities"]) == names


def test_predict_h5_matches_the_keras_model(tmp_path, tiny_qana, image_folder):
    from qana_keras.data.cache import resize_image
    from qana_keras.data.images import read_rgb
    from qana_keras.metrics import softmax
    from qana_keras.evaluation.predict import predict_images

    h5 = tmp_path / "tiny_float.h5"
    tiny_qana.model.save(h5, save_format="h5")
    result = predict_images(image_folder, h5)
    assert [r["file"].rsplit("/", 1)[-1] for r in result.rows] == ["a.jpg", "b.png"]
    image = resize_image(read_rgb(image_folder / "a.jpg"), 16)[None]
    expected = softmax(tiny_qana.model.predict(image, verbose=0).astype(np.float64))[0]
    assert [result.rows[0]["probabilities"][c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)


def test_predict_with_tta_averages_the_mirrored_views(tmp_path, tiny_qana, image_folder):
    from qana_keras.data.cache import resize_image
    from qana_keras.data.images import read_rgb
    from qana_keras.metrics import softmax
    from qana_keras.evaluation.predict import predict_images

    h5 = tmp_path / "tiny_float.h5"
    tiny_qana.model.save(h5, save_format="h5")
    result = predict_images(image_folder, h5, tta=2)
    image = resize_image(read_rgb(image_folder / "a.jpg"), 16)[None]
    views = [image, image[:, :, ::-1]]
    expected = np.mean([softmax(tiny_qana.model.predict(v, verbose=0).astype(np.float64))[0] for v in views], axis=0)
    assert [result.rows[0]["probabilities"][c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="--tta 3"):
        predict_images(image_folder, h5, tta=3)


def test_predict_wrong_class_count_is_a_one_line_error(tmp_path, tiny_qana, image_folder, capsys):
    fbz = _fbz_with_classes(tmp_path, tiny_qana, ["akiec", "bcc"])
    assert main(["predict", str(image_folder / "a.jpg"), "--model", str(fbz)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "classes.json" in err


def test_predict_missing_input_is_an_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nowhere"), "--model", str(tmp_path / "m.fbz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_version_names_the_pinned_stack(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "qana-keras 0.1.0" in out and "git " in out
    for pinned in ("akida 2.19.3", "cnn2snn 2.19.3", "quantizeml 1.2.5", "tensorflow 2.19"):
        assert pinned in out
