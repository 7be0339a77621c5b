"""Expected failures print one ``error:`` line in ``qana`` and in every script; bugs keep their traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from qana_keras.failures import run_main
from qana_keras.io import RunFolderError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO_ROOT / "scripts").glob("*.py"))


def _raise(error):
    def main(argv=None):
        raise error
    return main


@pytest.mark.parametrize("error", [RunFolderError("runs/x holds a run with other settings;\n remove it"),
                                   FileNotFoundError("no such file: a.fbz"), ValueError("bad key")])
def test_an_expected_failure_is_one_line_and_status_2(error, capsys, monkeypatch):
    monkeypatch.delenv("QANA_DEBUG", raising=False)
    assert run_main(_raise(error)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert " ".join(str(error).split()) in err


def test_a_bug_keeps_its_traceback_and_debug_keeps_every_one(monkeypatch):
    with pytest.raises(KeyError):
        run_main(_raise(KeyError("a bug")))
    monkeypatch.setenv("QANA_DEBUG", "1")
    with pytest.raises(ValueError):
        run_main(_raise(ValueError("bad key")))


def test_status_and_argv_pass_through():
    assert run_main(lambda argv: 1) == 1
    assert run_main(lambda argv: None) == 0
    seen = []
    run_main(lambda argv: seen.append(argv), ["--x"])
    assert seen == [["--x"]]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_routes_its_main_through_run_main(script):
    text = script.read_text()
    assert "sys.exit(run_main(main))" in text and "parse_args(argv)" in text, \
        f"{script.name}: end with sys.exit(run_main(main)) and parse the argv it is given"


def test_a_script_given_a_missing_model_says_so_in_one_line(tmp_path):
    missing = tmp_path / "nope.fbz"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "paired_compare.py"), str(missing), str(missing)],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nope.fbz" in last and "Traceback" not in done.stderr
