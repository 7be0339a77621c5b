"""Issue 28, data/config/run-folder half: bad input gives a one-line error naming the culprit, never a wrong
result, a traceback or lost files. Every fixture is made on the fly."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures import blob_image, write_ham10000_fixture
from PIL import Image

from qana_keras.cli import main
from qana_keras.config import ConfigError, load_config

# ---------------------------------------------------------------------------------------------------
# Config values: type- and range-checked at load, every error names the key, the value and what is allowed


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", r"train.epochs=0 is out of range; allowed: a number >= 1"),
    ("train.epochs=-2", r"train.epochs=-2 is out of range"),
    ("train.epochs=abc", r"train.epochs='abc' is not an integer"),
    ("train.batch_size=0", r"train.batch_size=0 is out of range"),
    ("train.batch_size=-4", r"train.batch_size=-4 is out of range"),
    ("data.image_size=0", r"data.image_size=0 is out of range"),
    ("model.widths=a,b", r"model.widths='a' is not an integer"),
    ("train.class_weighting=inverse", r"train.class_weighting='inverse' is out of range; allowed: one of none, "
                                      r"balanced, sqrt"),
    ("data.crop=center", r"data.crop='center' is out of range; allowed: one of none, saliency, mask"),
    ("train.learning_rate=0", r"train.learning_rate=0.0 is out of range"),
    ("train.loss=focal", r"train.loss='focal' is out of range; allowed: one of cross_entropy, balanced_softmax, ldam"),
    ("train.ema_decay=1", r"train.ema_decay=1.0 is out of range; allowed: a number in \[0.0, 1.0\)"),
    ("train.mix=blend", r"train.mix='blend' is out of range; allowed: one of none, mixup, cutmix"),
    ("train.mix_alpha=0", r"train.mix_alpha=0.0 is out of range; allowed: a number > 0"),
    ("train.selection=val_top1", r"train.selection='val_top1' is out of range; allowed: one of val_macro_f1, source_mean"),
])
def test_bad_override_names_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, [override])
    assert f"override {override!r}" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("model:\n  widths: 32\n", r"\[model\]: model.widths=32 is not a list"),
    ("train:\n  epochs: \"2\"\n", r"\[train\]: train.epochs='2' is not an integer \(quoted in YAML"),
    ("train:\n  epochs: 0\n", r"\[train\]: train.epochs=0 is out of range"),
    ("- train\n- model\n", r"expected a mapping of sections .* got a list"),
    ("train: 5\n", r"section 'train' must be a mapping"),
    ("train:\n  augment_flips: 1\n", r"train.augment_flips=1 is not true or false"),
])
def test_bad_yaml_value_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: [8\n  seed: 1\n")
    with pytest.raises(ConfigError, match=rf"{path} line \d+: YAML syntax error"):
        load_config(path)


def test_yaml_exponent_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 2e-3\n")  # PyYAML reads this as a string
    assert load_config(path).train.learning_rate == pytest.approx(2e-3)


def test_cli_reports_a_bad_value_in_one_line(tmp_path, capsys):
    assert main(["train", "--run", str(tmp_path / "run"), "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.epochs=0" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# Images: a partial JPEG that still ends with the end marker, stale cache, empty data set, links outside


@pytest.fixture
def ham(tmp_path):
    return write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=2, images_per_lesion=1, size=(40, 30))


def _jpeg(progressive: bool = False, seed: int = 0) -> bytes:
    out = io.BytesIO()
    image = blob_image(np.random.default_rng(seed), (200, 40, 40), (64, 48))
    Image.fromarray(image).save(out, "JPEG", quality=90, progressive=progressive)
    return out.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.97])
def test_jpeg_cut_short_but_ending_with_ffd9_is_refused(ham, tmp_path, progressive, fraction):
    from qana_keras.data.checks import DatasetError
    from qana_keras.data.ham10000 import validate
    from qana_keras.data.images import read_rgb

    data = _jpeg(progressive)
    victim = sorted(ham.rglob("*.jpg"))[0]
    victim.write_bytes(data[: int(len(data) * fraction)] + b"\xff\xd9")
    with Image.open(victim) as img:
        img.load()  # PIL itself decodes it without complaint: the silent case
    with pytest.raises(DatasetError, match="truncated"):
        read_rgb(victim)
    report = validate(ham)
    assert not report.ok and victim.name in report.errors[0] and "truncated" in report.errors[0]


@pytest.mark.parametrize("progressive", [False, True])
def test_complete_jpeg_is_accepted(tmp_path, progressive):
    from qana_keras.data.images import read_rgb

    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg(progressive) + b"\0\0")  # zero padding after the end marker is legal
    assert read_rgb(path).shape == (48, 64, 3)


def test_replaced_image_with_same_size_and_mtime_is_not_served_stale(ham, tmp_path):
    from qana_keras.data import ham10000
    from qana_keras.data.cache import load_cached_images

    paths = ham10000.load_metadata(ham)["path"].tolist()
    first = load_cached_images(paths, 16, tmp_path / "cache", log=lambda *_: None)
    victim = Path(paths[0])
    stat = victim.stat()
    # Another picture at lower quality (smaller), zero-padded after its end marker to the victim's size.
    out = io.BytesIO()
    Image.fromarray(255 - np.asarray(Image.open(victim))).save(out, "JPEG", quality=50)
    assert len(out.getvalue()) <= stat.st_size
    victim.write_bytes(out.getvalue() + b"\0" * (stat.st_size - len(out.getvalue())))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    second = load_cached_images(paths, 16, tmp_path / "cache", log=lambda *_: None)
    assert not np.array_equal(second[0], first[0])
    assert np.array_equal(second[1:], first[1:])


def test_header_only_csv_and_empty_image_folders_are_an_error(tmp_path, capsys):
    root = tmp_path / "empty"
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        (root / part).mkdir(parents=True)
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n")
    assert main(["data", "validate", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "the data set is empty" in out and "OK" not in out


def test_empty_pad_ufes_and_isic_are_errors(tmp_path):
    from fixtures import PAD_COLUMNS

    from qana_keras.data import isic2018, pad_ufes
    from qana_keras.data.checks import DatasetError

    (tmp_path / "pad" / "images").mkdir(parents=True)
    (tmp_path / "pad" / "metadata.csv").write_text(",".join(PAD_COLUMNS) + "\n")
    with pytest.raises(DatasetError, match="the data set is empty"):
        pad_ufes.load_metadata(tmp_path / "pad")
    (tmp_path / "isic").mkdir()
    (tmp_path / "gt.csv").write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n")
    with pytest.raises(DatasetError, match="the data set is empty"):
        isic2018.load_metadata(tmp_path / "isic", tmp_path / "gt.csv")


def test_symlink_out_of_the_data_folder_is_refused(ham, tmp_path, capsys):
    from qana_keras.data.checks import DatasetError
    from qana_keras.data.ham10000 import load_metadata

    victim = sorted(ham.rglob("*.jpg"))[0]
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(elsewhere)
    assert main(["data", "validate", "--data", str(ham)]) == 1
    out = capsys.readouterr().out
    assert f"{victim.name} is a symbolic link to {elsewhere}, outside the data folder" in out
    with pytest.raises(DatasetError, match="symbolic link"):
        load_metadata(ham)


def test_symlink_inside_the_data_folder_is_fine(ham):
    from qana_keras.data.ham10000 import load_metadata

    victim = sorted(ham.rglob("*.jpg"))[0]
    (ham / "store").mkdir()
    moved = ham / "store" / victim.name
    victim.rename(moved)
    victim.symlink_to(moved)
    assert len(load_metadata(ham)) == 14


def test_symlink_out_of_pad_ufes_is_refused(tmp_path):
    from fixtures import write_pad_ufes_fixture

    from qana_keras.data import pad_ufes
    from qana_keras.data.checks import DatasetError

    root = write_pad_ufes_fixture(tmp_path / "pad", per_diagnostic=1, missing_per_diagnostic=0)
    victim = sorted((root / "images").iterdir())[0]
    elsewhere = tmp_path / victim.name
    victim.rename(elsewhere)
    victim.symlink_to(elsewhere)
    with pytest.raises(DatasetError, match="symbolic link"):
        pad_ufes.load_metadata(root)


# ---------------------------------------------------------------------------------------------------
# Command line: conflicting flags refused, `data split` never deletes a user's file and names bad paths


@pytest.mark.parametrize("extra, flag", [
    (["--set", "train.epochs=5"], "--set"), (["--quick"], "--quick"), (["--overwrite"], "--overwrite"),
    (["--config", "configs/qana.yaml"], "--config"), (["--run", "elsewhere"], "--run"), (["--data", "d"], "--data"),
])
def test_resume_refuses_options_it_would_ignore(tmp_path, capsys, extra, flag):
    assert main(["train", "--resume", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "cannot be combined" in err and "\n" not in err


def test_ground_truth_with_ham10000_is_refused(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "m.h5"), "--data", str(tmp_path), "--ground-truth",
                 str(tmp_path / "gt.csv"), "--json", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--ground-truth is for --format isic2018" in err and "\n" not in err


@pytest.fixture
def ham3(tmp_path):
    """Three lesions per class: the fewest a train/val/test split takes."""
    return write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=3, images_per_lesion=1, size=(40, 30))


def test_split_keeps_a_users_file_named_like_the_old_scratch_file(ham3, tmp_path, capsys):
    ham = ham3
    out = tmp_path / "split.csv"
    assert main(["data", "split", "--data", str(ham), "--out", str(out)]) == 0
    mine = tmp_path / "split.new.csv"
    mine.write_text("my notes\n")
    assert main(["data", "split", "--data", str(ham), "--out", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert mine.read_text() == "my notes\n"
    assert main(["data", "split", "--data", str(ham), "--out", str(out), "--seed", "3"]) == 1
    assert mine.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ham", "split.csv", "split.new.csv"]


def test_split_onto_a_folder_or_under_a_file_is_a_one_line_error(ham3, tmp_path, capsys):
    ham = ham3
    assert main(["data", "split", "--data", str(ham), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--out {tmp_path} is a folder" in err and "\n" not in err
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    assert main(["data", "split", "--data", str(ham), "--out", str(blocker / "split.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot write the split to {blocker / 'split.csv'}" in err and "\n" not in err


# ---------------------------------------------------------------------------------------------------
# Training: start checks before the folder is touched, nothing a user wrote deleted, resume after any kill


def _quiet(*_):
    pass


def _fake_finished_run(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  epochs: 1\n")
    (run / "metrics.json").write_text('{"old": true}\n')
    (run / "qana.fbz").write_bytes(b"converted model")


def test_bad_image_size_fails_before_the_folder_or_the_cache_is_touched(tmp_path):
    from test_train import tiny_config

    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=1)
    config.data.image_size = 50
    with pytest.raises(ValueError, match="data.image_size=50"):
        train(tmp_path / "run", config, log=_quiet)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_overwrite_with_a_bad_config_keeps_the_old_run(tmp_path):
    from test_train import tiny_config

    from qana_keras.data.checks import DatasetError
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=1)
    config.data.data_dir = str(tmp_path / "nowhere")
    _fake_finished_run(tmp_path / "run")
    with pytest.raises(DatasetError, match="nowhere"):
        train(tmp_path / "run", config, overwrite=True, log=_quiet)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "metrics.json", "qana.fbz"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    from test_train import tiny_config

    from qana_keras.io import RunFolderError
    from qana_keras.training.train import train

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="not a run folder"):
        train(tmp_path / "mine", tiny_config(tmp_path, epochs=1), overwrite=True, log=_quiet)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_run_under_a_file_is_a_one_line_error(tmp_path):
    from test_train import tiny_config

    from qana_keras.io import RunFolderError
    from qana_keras.training.train import train

    (tmp_path / "somefile").write_text("x")
    with pytest.raises(RunFolderError, match="cannot create the run folder .*somefile/run") as error:
        train(tmp_path / "somefile" / "run", tiny_config(tmp_path, epochs=1), log=_quiet)
    assert "\n" not in str(error.value)


def test_replaced_run_is_moved_aside_and_a_failed_start_can_be_retried(tmp_path):
    """--overwrite moves the old run aside; a start that fails after writing config.yaml (a bad image found while
    caching) does not block a plain retry."""
    from test_train import tiny_config

    from qana_keras.data.checks import DatasetError
    from qana_keras.io import read_json
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=1)
    run = tmp_path / "run"
    _fake_finished_run(run)
    victim = sorted((tmp_path / "ham").rglob("*.jpg"))[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2] + b"\xff\xd9")
    with pytest.raises(DatasetError, match="truncated"):
        train(run, config, overwrite=True, log=_quiet)
    (aside,) = tmp_path.glob("run.replaced-*")
    assert read_json(aside / "metrics.json") == {"old": True} and (aside / "qana.fbz").exists()
    assert (run / "config.yaml").exists()  # the failed start
    victim.write_bytes(good)
    assert train(run, config, log=_quiet) is not None  # no --overwrite needed
    assert len(read_json(run / "state.json")["history"]) == 1


def test_a_folder_with_only_a_config_yaml_is_not_a_failed_start(tmp_path):
    """A failed start has config.yaml and versions.json (written together before any image): a user's folder
    holding just a config.yaml (and logs/) is refused without --overwrite, not emptied."""
    from test_train import tiny_config

    from qana_keras.io import RunFolderError
    from qana_keras.training.train import train

    mine = tmp_path / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "config.yaml").write_text("# my own settings\n")
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(mine, tiny_config(tmp_path, epochs=1), log=_quiet)
    assert (mine / "config.yaml").read_text() == "# my own settings\n" and (mine / "logs").is_dir()


def test_check_start_builds_the_model_without_imagenet_weights(tmp_path, monkeypatch):
    from test_train import tiny_config

    import qana_keras.training.train as train_module

    built = []
    real = train_module.build_model
    monkeypatch.setattr(train_module, "build_model",
                        lambda model, **kw: built.append(model.pretrained) or real(model, **kw))
    config = tiny_config(tmp_path, epochs=1)
    assert config.model.pretrained
    train_module.check_start(config, log=_quiet)
    assert built == [False] and config.model.pretrained  # the caller's config is not changed


def test_check_start_names_a_missing_backbone_file_and_refuses_two_initialisations(tmp_path):
    from test_train import tiny_config

    from qana_keras.training.train import check_start

    config = tiny_config(tmp_path, epochs=1)
    config.train.init_backbone_from = str(tmp_path / "missing.h5")
    with pytest.raises(FileNotFoundError, match=r"train.init_backbone_from: .*missing.h5 not found"):
        check_start(config, log=_quiet)
    (tmp_path / "a.h5").write_bytes(b"")
    config.train.init_backbone_from = config.train.init_from = str(tmp_path / "a.h5")
    with pytest.raises(ValueError, match="train.init_from and train.init_backbone_from are both set; give one"):
        check_start(config, log=_quiet)
    config.train.init_from = ""
    with pytest.raises(ValueError, match="train.init_backbone_from needs a pretrained Lite0 variant .* not qana"):
        check_start(config, log=_quiet)
    config.model.variant = "lite0-b5"
    with pytest.raises(ValueError, match=r"a.h5"):  # an empty file is no Keras model: refused before any image
        check_start(config, log=_quiet)


def test_make_quick_deletes_only_its_own_scratch_run():
    """`make all QUICK=1` trains without --overwrite (no runs/qana-quick.replaced-* pile-up) after deleting
    runs/qana-quick itself; with another RUN it deletes nothing."""
    import subprocess

    from fixtures import REPO

    def dry(*args):
        # --no-print-directory and no inherited MAKEFLAGS: under `make test` a sub-make would print its folder
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        return subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "train", *args],
                              cwd=REPO, capture_output=True, text=True, check=True, env=env).stdout.splitlines()

    train = ".venv/bin/qana train --config configs/lite0-b10-112-isic.yaml --run"
    assert dry("QUICK=1") == ["rm -rf runs/qana-quick", f"{train} runs/qana-quick --quick"]
    assert dry("QUICK=1", "RUN=runs/mine") == [f"{train} runs/mine --quick"]
    assert not any("rm " in line for line in dry())


def test_resume_after_a_kill_between_checkpoint_and_state(tmp_path):
    """The checkpoint of epoch 2 is written, state.json still says 1 epoch (or is gone): resume redoes the
    missing epochs instead of crashing."""
    from test_train import tiny_config

    from qana_keras.io import read_json, write_json
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=3)
    run = tmp_path / "run"
    assert train(run, config, stop_after=2, log=_quiet) is None
    state = read_json(run / "state.json")
    original = state["history"]
    write_json(run / "state.json", {**state, "epochs_done": 1, "history": original[:1]})  # the kill
    assert train(run, resume=True, log=_quiet) is not None
    history = read_json(run / "state.json")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[1]["loss"] == original[1]["loss"]  # epoch 2 redone from checkpoint 1, identically

    (run / "state.json").unlink()  # killed before the first state.json: start over, no crash
    (run / "metrics.json").unlink()
    assert train(run, resume=True, log=_quiet) is not None
    assert [h["epoch"] for h in read_json(run / "state.json")["history"]] == [1, 2, 3]


# --------------------------------------------------------------------------------------------------
# One helper each: the mask digest (data.cache.files_digest) and the quick-profile fields (runs.quick_fields)


def test_mask_crop_key_is_the_cache_digest_of_the_masks(tmp_path):
    import pandas as pd

    from qana_keras.config import Config
    from qana_keras.crop import cache as crop
    from qana_keras.data.cache import files_digest

    assert not hasattr(crop, "_files_digest")  # no wrapper: the crop cache calls data.cache.files_digest itself
    masks = [tmp_path / f"ISIC_{i}_segmentation.png" for i in range(2)]
    for i, path in enumerate(masks):
        path.write_bytes(bytes([i]) * 10)
    data = Config().data
    data.crop, data.mask_dir = "mask", str(tmp_path)
    params = crop.crop_cache_params(pd.DataFrame({"image_id": ["ISIC_0", "ISIC_1"]}), data)
    assert params["masks"] == files_digest(masks)


def test_quick_fields_are_built_in_one_place():
    import inspect

    from qana_keras import runs
    from qana_keras.onchip import deploy
    from qana_keras.conversion import run as convert
    from qana_keras.runs import QUICK_NOTE, quick_fields

    assert quick_fields(True) == {"quick": True, "note": QUICK_NOTE} and quick_fields(False) == {"quick": False}
    for module in (convert, deploy, runs):  # no module spells the dict out again
        assert '{"note": QUICK_NOTE} if quick' not in inspect.getsource(module).replace(
            inspect.getsource(runs.quick_fields), "")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_committed_config_passes_the_start_checks(path, tmp_path, monkeypatch):
    """Each recipe in configs/ (the `make all` default among them) loads, names files that exist and builds its
    model at its input size; the data folders are a small fixture, ISIC 2019 only named (not read here)."""
    from test_train import tiny_config

    from qana_keras.training.train import check_start

    fixture = tiny_config(tmp_path)
    monkeypatch.setenv("QANA_ISIC2019_DIR", str(tmp_path / "isic2019"))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # soft_targets/init_from paths are relative to the repo
    config = load_config(path)
    config.data.data_dir, config.data.split_file = fixture.data.data_dir, fixture.data.split_file
    check_start(config, log=_quiet)
