"""Embedding-space SMOTE head: whitening, safe anchors, oversampling, folding into head/dense, Akida, run folder."""
from __future__ import annotations


import numpy as np
import pytest
from fixtures import QUIET, random_images, write_run_fixture

from qana_keras import CLASSES
from qana_keras.refit.head import equalization_rates, extract_embeddings, with_dense
from qana_keras.refit.head_fit import (HeadConfig, fit_head, fit_whitening, load_head, local_frames, minority_targets,
                                 oversample, safe_anchor_mask, save_head)
from qana_keras.io import RunFolderError, read_json

K = len(CLASSES)


def images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def imbalanced_blobs(counts=(60, 40, 30, 12, 50, 300, 15), dim: int = 12, seed: int = 0):
    """Gaussian classes with different means; ``counts`` per class (index = CLASSES order)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (K, dim))
    x = np.concatenate([rng.normal(centres[c], 1.0, (n, dim)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return x, y


# --------------------------------------------------------------------------------------------------
# Whitening and safe anchors (NumPy / scikit-learn / imbalanced-learn only)


def test_whitening_decorrelates_train_and_keeps_the_top_components():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 20)) @ rng.normal(size=(20, 20)) + 3.0
    w = fit_whitening(x, 8, eps=0.0)
    z = w.transform(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(8), atol=1e-8)
    np.testing.assert_allclose(w.components @ w.components.T, np.eye(8), atol=1e-10)
    full = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    np.testing.assert_allclose(w.eigenvalues, full[:8], rtol=1e-8)
    assert 0 < w.explained_variance < 1
    with pytest.raises(ValueError, match="use --components <= 20"):
        fit_whitening(x, 21)


def test_whitening_is_sklearn_pca_whiten_but_with_a_floor_on_empty_directions():
    """Without the eps floor, fit_whitening is sklearn's exact PCA(whiten=True), at the real size (2,048-value
    embeddings, 256 components); with it, near-empty directions keep a bounded gain."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    n, d, k = 2000, 2048, 256
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    x = (rng.standard_normal((n, d)) * np.geomspace(10, 0.01, d)) @ basis + 1.0  # a decaying spectrum
    pca = PCA(k, whiten=True, svd_solver="covariance_eigh").fit(x)
    exact = fit_whitening(x, k, eps=0.0)
    np.testing.assert_allclose(exact.eigenvalues, pca.explained_variance_, rtol=1e-8)
    ours, theirs = exact.transform(x[:200]), pca.transform(x[:200])
    signs = np.sign(np.sum(ours * theirs, axis=0))  # each component's sign is a convention
    np.testing.assert_allclose(ours, theirs * signs, atol=1e-8 * np.abs(theirs).max())

    # 32 live directions, the rest nearly empty (ReLU channels that hardly ever fire): PCA(whiten=True) blows
    # those up by 1/sqrt(eigenvalue); the eps floor (1e-5 of the largest eigenvalue) bounds their gain.
    x = rng.standard_normal((500, 128)) * np.concatenate([np.geomspace(10, 0.5, 32), np.full(96, 1e-4)])
    pca, floored = PCA(64, whiten=True, svd_solver="covariance_eigh").fit(x), fit_whitening(x, 64)
    bound = 1 / np.sqrt(1e-5 * floored.eigenvalues[0])
    assert floored.scale.max() <= bound < 0.01 / np.sqrt(pca.explained_variance_.min())
    # live directions: the floor changes their scale by at most half of eps x largest / eigenvalue (< 0.3 %)
    np.testing.assert_allclose(floored.scale[:32], 1 / np.sqrt(pca.explained_variance_[:32]), rtol=3e-3)


def test_minority_targets_are_ratio_of_majority():
    y = np.repeat(np.arange(K), [10, 20, 30, 5, 40, 100, 50])
    assert minority_targets(y, 0.5) == {0: 50, 1: 50, 2: 50, 3: 50, 4: 50}
    assert minority_targets(y, 0.04) == {}


def test_safe_anchor_rule_drops_intruders_and_sparse_points():
    # Class 3 (df): a tight core of 10 points at the origin, 4 points in class 5's cloud, 2 far outliers.
    rng = np.random.default_rng(1)
    core = rng.normal(0, 0.1, (10, 2))
    intruders = np.array([[4.5, 4.5], [5.5, 5.5], [4.5, 5.5], [5.5, 4.5]])  # apart, each inside the majority
    outliers = np.array([[-3.0, 0.0], [0.0, -3.0]])
    majority = rng.normal([5, 5], 0.3, (60, 2))
    x = np.concatenate([core, intruders, outliers, majority])
    y = np.concatenate([np.full(16, 3), np.full(60, 5)])
    mask, report = safe_anchor_mask(x, y, [3], k=3, min_anchors=3)
    assert not mask[10:14].any(), "points surrounded by another class are never anchors"
    assert not mask[14:16].any(), "points far from their class (spread above the median) are not anchors"
    assert mask[:10].sum() >= 3 and not mask[16:].any()
    # At most half of the class can pass the median-spread condition (ties aside).
    assert report["df"]["anchors"] <= 8 and not report["df"]["fallback"]
    assert report["df"]["mostly_own_class"] == 12


def test_too_few_safe_anchors_fall_back_to_the_best_ranked():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal([5, 5], 0.3, (5, 2)), rng.normal([5, 5], 0.3, (60, 2))])
    y = np.concatenate([np.full(5, 0), np.full(60, 5)])
    mask, report = safe_anchor_mask(x, y, [0], k=3, min_anchors=4)
    assert report["akiec"]["fallback"] and mask.sum() == 4 and mask[:5].sum() == 4


@pytest.mark.parametrize("sampler", ["smote", "borderline", "svm", "adasyn"])
def test_oversampling_reaches_the_target_with_every_sampler(sampler):
    x, y = imbalanced_blobs()
    config = HeadConfig(sampler=sampler, ratio=0.5, k_neighbors=3, safe_k=3, noise=0.1)
    z_new, y_new, report = oversample(x, y, config)
    targets = minority_targets(y, 0.5)
    for c, target in targets.items():
        made = report["generated"][CLASSES[c]]["made"]
        # SMOTE makes exactly what is asked; the border-driven samplers may make fewer (or, ADASYN, a few more),
        # or refuse a class without a border, which is recorded, not hidden.
        if sampler == "smote":
            assert made == target - np.sum(y == c)
        assert np.sum(y_new == c) == made
    assert set(np.unique(y_new)) <= set(targets)
    assert z_new.shape[1] == x.shape[1]


def test_synthetic_samples_stay_between_safe_anchors_without_noise():
    x, y = imbalanced_blobs()
    config = HeadConfig(sampler="smote", ratio=0.5, k_neighbors=3, safe_k=3, noise=0.0)
    mask, _ = safe_anchor_mask(x, y, list(minority_targets(y, 0.5)), 3, 4)
    z_new, y_new, _ = oversample(x, y, config)
    for c in np.unique(y_new):
        anchors = x[mask & (y == c)]
        made = z_new[y_new == c]
        assert np.all(made >= anchors.min(axis=0) - 1e-9) and np.all(made <= anchors.max(axis=0) + 1e-9)


def test_perturbation_follows_the_local_principal_directions():
    # Class 0 lies on a line in 3-D: noise along its local principal direction keeps it on that line.
    rng = np.random.default_rng(3)
    t = rng.uniform(-5, 5, 40)
    line = np.stack([t, 2 * t, np.zeros_like(t)], axis=1)
    others = rng.normal([0, 0, 8], 1.0, (200, 3))
    x = np.concatenate([line, others])
    y = np.concatenate([np.zeros(40, int), np.full(200, 5)])
    quiet, noisy = (oversample(x, y, HeadConfig(sampler="smote", ratio=0.5, k_neighbors=3, safe_k=3, noise=n,
                                                 safe_anchors=False))[0] for n in (0.0, 1.0))
    assert len(quiet) == len(noisy) == 60
    assert np.abs(noisy - quiet).max() > 0.05, "noise must move the samples"
    direction = np.array([1, 2, 0]) / np.sqrt(5)
    off_line = noisy - np.outer(noisy @ direction, direction)
    np.testing.assert_allclose(off_line, 0, atol=1e-8)
    frames = local_frames(x, np.arange(40), k=3)
    assert frames.shape == (40, 3, 3)


def test_config_is_validated():
    with pytest.raises(ValueError, match="sampler must be one of"):
        HeadConfig(sampler="tomek").validate()
    with pytest.raises(ValueError, match="unknown head setting"):
        HeadConfig.from_dict({"components": 8, "colour": 1})
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        HeadConfig(ratio=2.0).validate()


# --------------------------------------------------------------------------------------------------
# Folding into the tiny QANA's head/dense, quantization and conversion


@pytest.fixture(scope="module")
def tiny(tiny_qana):
    model = tiny_qana.model  # shared with other modules: with_dense copies it, nothing here changes it
    x = images(64)
    y = np.arange(64) % K  # arbitrary labels: the folding identity does not care whether the head is good
    emb = extract_embeddings(model, x)
    config = HeadConfig(embedding="float", components=16, sampler="smote", ratio=1.0, k_neighbors=3, safe_k=3)
    head = fit_head(emb, y, config)
    return model, x, y, emb, head


def test_folded_model_computes_head_of_whitened_embedding(tiny):
    model, x, _, emb, head = tiny
    assert emb.shape == (64, 128)
    folded = with_dense(model, head.kernel, head.folded_bias)
    assert [l.name for l in folded.layers] == [l.name for l in model.layers]
    logits = folded.predict(x, verbose=0)
    expected = head.whitening.transform(emb) @ head.weight.T + head.bias
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # Everything but head/dense is untouched, in the copy and in the original.
    for a, b in zip(model.layers, folded.layers):
        if a.name != "head/dense":
            for wa, wb in zip(a.get_weights(), b.get_weights()):
                np.testing.assert_array_equal(wa, wb)
    assert not np.allclose(model.get_layer("head/dense").get_weights()[0], head.kernel)


def test_wrong_head_shape_is_refused(tiny):
    from qana_keras.refit.head_fit import HeadError

    model, *_ = tiny
    with pytest.raises(HeadError, match="'head/dense' of .* is \\(128, 7\\)"):
        with_dense(model, np.zeros((64, 7)), np.zeros(7))


def test_folded_tiny_model_quantizes_and_converts_fully_integer(tiny, tiny_qana):
    from qana_keras.conversion.quantize import integer_completeness, quantize_for_akida, to_akida
    from qana_keras.runtime.load import predict_logits

    model, x, _, _, head = tiny
    folded = with_dense(model, head.kernel, head.folded_bias)
    q_orig = tiny_qana.qmodel  # the same model quantized on the same calibration images
    q_fold, cut = quantize_for_akida(folded, random_images(64), "qana", batch_size=16, **QUIET)
    assert cut is None and integer_completeness(q_fold)["r_succ"] == 1.0
    ak = to_akida(q_fold, strict=True, variant="qana", **QUIET)
    assert list(ak.output_shape) == [1, 1, 7]
    # The backbone quantizes identically under another head: the Akida dense layer reads exactly the
    # embeddings a head fitted with embedding="quantized" was fitted on.
    e_orig, e_fold = extract_embeddings(q_orig, x), extract_embeddings(q_fold, x)
    np.testing.assert_array_equal(e_orig, e_fold)
    # Reading the embeddings adds no consumer to head/flatten (cnn2snn refuses a Flatten that feeds two layers).
    assert len(q_orig.get_layer("head/flatten")._outbound_nodes) == 1
    # Calibration equalized the channels feeding the head (rates != 1 on this untrained model): the
    # dense reads 8-bit values (a 2**-k grid) times those rates, and extract_embeddings undoes them.
    rates = equalization_rates(q_fold)
    assert rates.shape == (128,) and np.all(rates > 0) and np.abs(rates - 1).max() > 0.05
    read = e_fold * rates
    steps = read * 2.0 ** 8
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    float_emb = extract_embeddings(model, x)
    assert np.abs(e_fold - float_emb).mean() < 0.1 * np.abs(float_emb).mean()
    q_logits = q_fold(x, training=False).numpy()
    a_logits = predict_logits(ak, x)
    np.testing.assert_array_equal(a_logits.argmax(1), q_logits.argmax(1))
    # So the folded head on these embeddings is what the quantized dense computes, up to its 8-bit weights;
    # in the equalized basis it would be far off.
    near = head.logits(e_fold)
    assert np.abs(near - q_logits).max() <= 0.05 * np.ptp(near)
    assert np.abs(head.logits(read) - q_logits).max() > 0.1 * np.ptp(near)


def test_save_and_load_are_plain_arrays(tiny, tmp_path):
    *_, emb, head = tiny
    save_head(head, tmp_path / "head.npz", tmp_path / "head.json", extra={"note": "test"})
    with np.load(tmp_path / "head.npz", allow_pickle=False) as f:
        assert all(f[k].dtype.kind == "f" for k in f.files)
    meta = read_json(tmp_path / "head.json")
    assert meta["config"]["components"] == 16 and meta["note"] == "test" and "safe_anchor_rule" in meta
    loaded = load_head(tmp_path / "head.npz", tmp_path / "head.json")
    np.testing.assert_array_equal(loaded.logits(emb), head.logits(emb))
    assert loaded.config == head.config


# --------------------------------------------------------------------------------------------------
# Run folder and command line (untrained tiny model on the synthetic fixture: no training here)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from qana_keras.models.qana import build_model

    run, config, _ = write_run_fixture(tmp_path_factory.mktemp("head"), 8, size=(48, 36), image_size=16)
    build_model(config.model, input_size=16).save(run / "qana_float.h5", save_format="h5")
    return run


def test_head_run_writes_artifacts_and_refuses_to_overwrite(tiny_run):
    import tf_keras as keras

    from qana_keras.refit.head import head_run
    from qana_keras.refit.head_fit import load_head

    config = HeadConfig(components=8, k_neighbors=2, safe_k=2, calibration=32, ratio=1.0)
    meta = head_run(tiny_run, config, n_boot=20, **QUIET)
    for name in ("head.npz", "head.json", "qana_head_float.h5"):
        assert (tiny_run / name).exists(), name
    assert meta["config"]["embedding"] == "quantized" and meta["source_model"] == "qana_float.h5"
    for split in ("val", "test"):
        m = meta["metrics"][split]
        assert {"float", "original_float", "quantized_embedding"} <= set(m)
        assert {"top1", "macro_f1", "balanced_accuracy", "bootstrap_95", "vs_original_95"} <= set(m["float"])
        assert m["original_float"]["vs_original_95"]["macro_f1"]["difference"] == 0.0
    # The saved model holds the saved head.
    head = load_head(tiny_run / "head.npz", tiny_run / "head.json")
    saved = keras.models.load_model(tiny_run / "qana_head_float.h5", compile=False)
    np.testing.assert_allclose(saved.get_layer("head/dense").get_weights()[0], head.kernel, rtol=1e-6, atol=1e-7)
    before = (tiny_run / "head.json").read_text()
    with pytest.raises(RunFolderError, match="pass --overwrite"):
        head_run(tiny_run, config, n_boot=20, **QUIET)
    assert (tiny_run / "head.json").read_text() == before


def test_cli_head(tiny_run, tmp_path, capsys):
    import shutil

    from qana_keras.cli import main

    # Its own copy with a head already there: it must not rely on the test above having run on this fixture.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "head.json").write_text("{}")
    args = ["head", "--run", str(run), "--components", "8", "--k-neighbors", "2", "--calibration", "32",
            "--embedding", "float", "--no-safe-anchors", "--n-boot", "20"]
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    meta = read_json(run / "head.json")
    assert meta["config"]["embedding"] == "float" and meta["config"]["safe_anchors"] is False
    assert "quantized_embedding" not in meta["metrics"]["test"]
    assert main(["head", "--run", str(tiny_run.parent / "nowhere")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
