"""Atomic file writes (a crash never leaves a half-written artifact behind), JSON, hashes, and paths as shown."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding src/qana_keras/ (also config.REPO_ROOT)


class RunFolderError(RuntimeError):
    """A run folder is missing, or would be overwritten without being asked to."""


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    # mkstemp makes the file private (0600); give the artifact the usual permissions instead.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    """The JSON in ``path``; a corrupt file is a ValueError that names it (so callers need not add the name)."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); fix or re-create it") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not valid JSON (not UTF-8 text); fix or re-create it") from None


def required_values(path: str | Path, data, keys: tuple[str, ...]) -> dict:
    """``data[key]`` for each key (nested with dots, e.g. ``models.akida.top1``), keyed by its last part; a missing
    one is a ValueError naming ``path`` (a partial or hand-edited JSON), not a KeyError."""
    out = {}
    for key in keys:
        value = data
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"{path}: no {key!r} in it (partial or hand-edited?); re-create it or remove it "
                                 "from the model folder")
            value = value[part]
        out[key.rsplit(".", 1)[-1]] = value
    return out


def read_classes(folder: str | Path) -> tuple[str, ...] | None:
    """The output class names of the model(s) in ``folder``: its ``classes.json`` (``{"classes": [...]}`` as
    `qana train` writes it, or a bare list), checked against ``qana_keras.CLASSES``; None if there is none."""
    from qana_keras import CLASSES

    path = Path(folder) / "classes.json"
    if not path.is_file():
        return None
    data = read_json(path)
    classes = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{path}: expected {{\"classes\": [names in output order]}}; fix or remove the file")
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f"{path}: " + (f"unknown class(es) {unknown}" if unknown else "a class named twice")
                         + f"; use each of {', '.join(CLASSES)} at most once")
    return tuple(classes)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Folders named by environment variables (the Makefile's data copies, the image cache): shown by their variable.
PATH_VARIABLES = ("QANA_DATA_DIR", "QANA_PAD_UFES_DIR", "QANA_ISIC2019_DIR", "QANA_CACHE_DIR")


def display_path(path: str | Path, *roots: str | Path) -> str:
    """``path`` as messages, reports and notebook outputs show it, without one machine's folders: relative to the
    first of ``roots`` holding it (default: the repository, then the working directory, then the folders of
    ``PATH_VARIABLES``, as ``$QANA_DATA_DIR/...``), else as given."""
    absolute = Path(path).absolute()
    for root in roots or (REPO_ROOT, Path.cwd()):
        if absolute.is_relative_to(Path(root).absolute()):
            return str(absolute.relative_to(Path(root).absolute()))
    for variable in () if roots else PATH_VARIABLES:
        folder = os.environ.get(variable)
        if folder and absolute.is_relative_to(Path(folder).absolute()):
            inside = absolute.relative_to(Path(folder).absolute())
            return f"${variable}" + ("" if inside == Path(".") else f"/{inside}")
    return str(path)
