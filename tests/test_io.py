"""What messages and notebook outputs show of a path: no machine's folders where they can be avoided."""
from __future__ import annotations

from qana_keras.config import REPO_ROOT
from qana_keras.io import display_path


def test_display_path_is_relative_to_the_repository_the_cwd_or_a_data_variable(tmp_path, monkeypatch):
    assert display_path(REPO_ROOT / "runs" / "qana" / "qana.fbz") == "runs/qana/qana.fbz"
    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "out" / "a.json") == "out/a.json"
    data = tmp_path.parent / "elsewhere" / "ham10000"
    assert display_path(data / "images") == str(data / "images")  # outside everything: as given
    monkeypatch.setenv("QANA_DATA_DIR", str(data))
    assert display_path(data) == "$QANA_DATA_DIR"
    assert display_path(data / "images") == "$QANA_DATA_DIR/images"
    assert display_path(data / "images", tmp_path.parent) == "elsewhere/ham10000/images"  # explicit roots only
