"""The `qana` command line: exit statuses and messages a user sees."""
import subprocess
import sys

from fixtures import write_ham10000_fixture

from qana_keras.cli import main
from qana_keras.config import REPO_ROOT


def test_validate_good_and_bad(tmp_path, capsys):
    root = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=3)
    assert main(["data", "validate", "--data", str(root)]) == 0
    assert "error" not in capsys.readouterr().out.lower()
    victim = sorted(root.rglob("*.jpg"))[0]
    victim.unlink()
    assert main(["data", "validate", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "1 error" in out and victim.stem in out and "put the file there or remove the row" in out


def test_split_is_idempotent_and_refuses_to_replace(tmp_path, capsys):
    root = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=5)
    out = tmp_path / "split.csv"
    assert main(["data", "split", "--data", str(root), "--out", str(out)]) == 0
    first = out.read_text()
    assert main(["data", "split", "--data", str(root), "--out", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert main(["data", "split", "--data", str(root), "--out", str(out), "--seed", "7"]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert out.read_text() == first
    assert main(["data", "split", "--data", str(root), "--out", str(out), "--seed", "7", "--force"]) == 0
    assert out.read_text() != first


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "cache", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "QANA_DATA_DIR" in err


def test_console_script_lists_verbs():
    qana = REPO_ROOT / ".venv" / "bin" / "qana"
    cmd = [str(qana)] if qana.exists() else [sys.executable, "-m", "qana_keras.cli"]
    result = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for verb in ("data", "train"):
        assert verb in result.stdout


def test_make_help_lists_every_documented_target():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    listed = {line.split()[1] for line in out.splitlines() if line.startswith("  make ")}
    # targets whose names have digits (train-akd1000), and those declared after the first .PHONY line (notebooks)
    assert {"train-akd1000", "convert-akd1000", "notebooks", "predict", "all", "evaluate"} <= listed


def test_evaluate_data_default_follows_the_format(tmp_path, monkeypatch, capsys):
    """--data defaults to $QANA_DATA_DIR for ham10000, $QANA_PAD_UFES_DIR for pad-ufes-20, nothing for isic2018."""
    import qana_keras.evaluation.evaluate

    seen = []
    monkeypatch.setattr(qana_keras.evaluation.evaluate, "evaluate_to_json", lambda *a, **k: seen.append((k["fmt"], k["data"])))
    monkeypatch.setenv("QANA_DATA_DIR", str(tmp_path / "ham"))
    monkeypatch.setenv("QANA_PAD_UFES_DIR", str(tmp_path / "pad"))

    def run(*extra):
        return main(["evaluate", "--model", str(tmp_path / "m.fbz"), "--json", str(tmp_path / "e.json"),
                     "--no-figures", *extra])

    assert run() == 0 and run("--format", "pad-ufes-20") == 0 and run("--format", "pad-ufes-20", "--data", "x") == 0
    assert seen == [("ham10000", str(tmp_path / "ham")), ("pad-ufes-20", str(tmp_path / "pad")), ("pad-ufes-20", "x")]
    capsys.readouterr()
    assert run("--format", "isic2018") == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: no isic2018 data folder: pass --data DIR (--format isic2018 has no default folder)"
    monkeypatch.delenv("QANA_PAD_UFES_DIR")
    assert run("--format", "pad-ufes-20") == 2
    assert capsys.readouterr().err.strip().endswith("pass --data DIR or set QANA_PAD_UFES_DIR")
    monkeypatch.delenv("QANA_DATA_DIR")
    assert run() == 2 and "pass --data DIR or set QANA_DATA_DIR" in capsys.readouterr().err
    assert len(seen) == 3


def test_every_option_of_every_verb_has_help_text():
    import argparse

    from qana_keras.cli import build_parser

    missing = []

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
            elif action.dest != "help" and not action.help:
                missing.append(f"{' '.join(words)} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), ["qana"])
    assert not missing, f"options without help text: {missing}"
