import pytest

from qana_keras.config import Config, load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  variant: qana-paper\n  widths: [8, 16]\ntrain:\n  epochs: 3\n")
    config = load_config(path, ["train.epochs=5", "train.balanced_sampling=true", "model.widths=4,8"])
    assert config.model.variant == "qana-paper"
    assert config.train.epochs == 5 and config.train.balanced_sampling is True
    assert config.model.widths == (4, 8)


def test_round_trip(tmp_path):
    config = Config()
    config.train.epochs = 7
    config.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config


@pytest.mark.parametrize("text, message", [
    ("optimiser:\n  lr: 1\n", "unknown section 'optimiser'"),
    ("train:\n  epoch: 1\n", "unknown setting 'epoch'"),
])
def test_unknown_keys_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_bad_override():
    with pytest.raises(ValueError, match="expected section.key=value"):
        load_config(None, ["epochs=3"])
    with pytest.raises(ValueError, match="no setting 'train.nope'"):
        load_config(None, ["train.nope=3"])
    with pytest.raises(ValueError, match="expected a boolean"):
        load_config(None, ["train.balanced_sampling=maybe"])


def test_class_subset_override_and_round_trip(tmp_path):
    config = load_config(None, ["data.classes=akiec,bcc,nv", "model.widths=8,16"])
    assert config.data.classes == ("akiec", "bcc", "nv") and config.model.widths == (8, 16)
    config.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").data.classes == ("akiec", "bcc", "nv")
    assert load_config(None, ["data.classes="]).data.classes == ()
