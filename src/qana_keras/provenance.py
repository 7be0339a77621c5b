"""What made an artifact: package versions and the git commit, recorded in every run folder."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from qana_keras.config import REPO_ROOT

PACKAGES = ("qana-keras", "tensorflow", "tf-keras", "quantizeml", "cnn2snn", "akida", "numpy", "scikit-learn",
            "imbalanced-learn", "opencv-python-headless")


def git_commit() -> str | None:
    """HEAD of the repository, with ``-dirty`` when tracked files have uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": found,
            "git_commit": git_commit()}
