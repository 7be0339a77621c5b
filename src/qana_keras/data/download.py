"""Fetch the official HAM10000 release from Harvard Dataverse (doi:10.7910/DVN/DBW86T).

What is fetched comes from a table (``FILES``) that callers and tests can replace. Each file is
streamed into a temporary file beside its final name and renamed only once complete, then zips are
unpacked into ``dest/<zip stem>/`` (again via a temporary folder) and the metadata table is written
as ``dest/HAM10000_metadata.csv``. The SHA-256 of every downloaded file is recorded in
``dest/SHA256SUMS`` (``sha256sum -c`` format). Finished steps are skipped on a re-run.

Offline, the first connection fails within ``timeout`` seconds with a DownloadError that says
how to lay the files out by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import shutil
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qana_keras import __version__
from qana_keras.data.checks import DatasetError
from qana_keras.data.ham10000 import METADATA_FILE, PART_DIRS, REQUIRED_COLUMNS
from qana_keras.io import atomic_path, atomic_write_text

DOI = "doi:10.7910/DVN/DBW86T"
LANDING_PAGE = "https://doi.org/10.7910/DVN/DBW86T"
DATAVERSE = "https://dataverse.harvard.edu"
SUMS_FILE = "SHA256SUMS"
# Dataverse turns away some default client user agents; say who we are instead.
USER_AGENT = f"qana-keras/{__version__} (HAM10000 download; python-urllib)"


class DownloadError(DatasetError):
    """A download failed; the message says how to put the files in place by hand."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch. ``kind`` is "zip" (unpacked into dest/<stem>/) or "table" (the metadata)."""

    name: str
    url: str
    sha256: str | None = None  # pinned checksum, or None where none has been verified
    kind: str = "zip"


# File ids of the Dataverse API (/api/access/datafile/<id>), as used by several public download scripts
# for this DOI; they could not be checked from this project's offline machines. The metadata id is the
# current version of HAM10000_metadata (3172582 is the 2018 original); ``format=original`` asks for the
# uploaded CSV rather than Dataverse's tab-separated export (both are accepted below).
# No checksum is pinned: none could be verified here. The sums of what was actually downloaded are
# written to dest/SHA256SUMS; pin them here once confirmed against a trusted copy.
FILES: tuple[RemoteFile, ...] = (
    RemoteFile("HAM10000_images_part_1.zip", f"{DATAVERSE}/api/access/datafile/3172585"),  # ~1.4 GB, 5,000 JPEGs
    RemoteFile("HAM10000_images_part_2.zip", f"{DATAVERSE}/api/access/datafile/3172584"),  # ~1.4 GB, 5,015 JPEGs
    RemoteFile("HAM10000_metadata.tab", f"{DATAVERSE}/api/access/datafile/4338392?format=original", kind="table"),
)


def manual_instructions(dest: Path) -> str:
    return (f"If this machine is offline, download the files by hand from {LANDING_PAGE} and lay them out as\n"
            f"  {dest}/{METADATA_FILE}\n"
            f"  {dest}/{PART_DIRS[0]}/ISIC_0024306.jpg ... (5,000 images, from {PART_DIRS[0]}.zip)\n"
            f"  {dest}/{PART_DIRS[1]}/ISIC_0029306.jpg ... (5,015 images, from {PART_DIRS[1]}.zip)\n"
            "then run `qana data validate`; or set QANA_DATA_DIR to a folder that already holds them.")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _resolve(host: str, port: int, timeout: float) -> None:
    """Look ``host`` up with a deadline: getaddrinfo itself has none and can hang on a dead resolver."""
    result: dict = {}

    def work():
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            result["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"name lookup of {host} took more than {timeout:g} s")
    if "error" in result:
        raise result["error"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fetch(remote: RemoteFile, target: Path, timeout: float, log: Callable[[str], None]) -> str:
    """Stream ``remote`` into ``target`` (atomically); returns its SHA-256."""
    parts = urllib.parse.urlsplit(remote.url)
    try:
        if parts.scheme in ("http", "https") and not urllib.request.getproxies():
            _resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), timeout)
        request = urllib.request.Request(remote.url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response, \
                atomic_path(target, suffix=".part") as tmp:
            expected = int(response.headers.get("Content-Length") or 0)
            log(f"downloading {remote.name} from {remote.url}"
                + (f" ({expected / 1e6:.0f} MB)" if expected else ""))
            h, done, next_report = hashlib.sha256(), 0, 0.1
            with open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if expected and done / expected >= next_report:
                        log(f"  {remote.name}: {done / expected:.0%}")
                        next_report += 0.1
            if expected and done != expected:
                raise http.client.IncompleteRead(b"", expected - done)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"could not download {remote.name} from {remote.url}: "
                            f"{type(e).__name__}: {reason}.\n{manual_instructions(target.parent)}") from e
    return h.hexdigest()


def _read_sums(path: Path) -> dict[str, str]:
    sums = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name:
                sums[name] = digest
    return sums


def _member_path(name: str, strip: str) -> str | None:
    """The relative path to extract a zip member to; None to skip; DownloadError if it escapes dest."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise DownloadError(f"zip member {name!r} points outside the target folder; the archive is not the "
                            "official one: delete it and download again")
    if strip and parts[0] == strip:
        parts = parts[1:]
    if not parts or parts[-1] == "" or parts[0] == "__MACOSX" or parts[-1].startswith("."):
        return None  # folder entries, macOS resource forks
    return "/".join(parts)


def _unpack(archive: Path, dest: Path, log: Callable[[str], None]) -> None:
    """Unpack ``archive`` into dest/<stem>/ through a temporary folder, so a half-done unpack never shows."""
    target = dest / archive.stem
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{target.name}."))
    try:
        with zipfile.ZipFile(archive) as z:
            members = [i for i in z.infolist() if not i.is_dir()]
            tops = {m.filename.replace("\\", "/").split("/")[0] for m in members} - {"__MACOSX"}
            # Some repacks nest everything in a folder named like the zip; drop that level.
            strip = target.name if tops == {target.name} else ""
            for info in members:
                rel = _member_path(info.filename, strip)
                if rel is None:
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise DownloadError(f"{archive} is not a valid zip ({e}); delete it and run the download again") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(f"unpacked {archive.name} into {target}/ ({sum(1 for _ in target.iterdir())} files)")


def _write_metadata_csv(table: Path, dest: Path) -> None:
    """Write the downloaded metadata (CSV, or Dataverse's tab export) as dest/HAM10000_metadata.csv."""
    text = table.read_text(encoding="utf-8-sig")
    sep = "\t" if "\t" in text.split("\n", 1)[0] else ","
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DownloadError(f"{table} is not a metadata table ({e}); delete it and download again") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DownloadError(f"{table} lacks column(s) {missing} (columns: {list(df.columns)}); it is not the "
                            f"HAM10000 metadata: delete it and download again")
    with atomic_path(dest / METADATA_FILE) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def _done(remote: RemoteFile, dest: Path) -> bool:
    """True when the file's unpacked result is already in place."""
    if remote.kind == "table":
        return (dest / METADATA_FILE).is_file()
    target = dest / Path(remote.name).stem
    return target.is_dir() and any(target.iterdir())


def download_ham10000(dest: Path, timeout: float = 10, files: Sequence[RemoteFile] | None = None,
                      log: Callable[[str], None] | None = None) -> None:
    """Download and unpack HAM10000 into ``dest`` (the layout :func:`ham10000.load_metadata` reads).

    ``files`` replaces the URL table (tests pass file:// URLs); ``timeout`` bounds each connection
    step. Archives are kept beside the result, with their SHA-256 in ``dest/SHA256SUMS``; a file
    whose pinned checksum differs is deleted and reported. Raises DownloadError (a DatasetError)
    saying how to place the files by hand when anything cannot be fetched.
    """
    dest = Path(dest).expanduser().absolute()
    log = log or _stderr
    files = FILES if files is None else tuple(files)
    dest.mkdir(parents=True, exist_ok=True)
    sums_path = dest / SUMS_FILE
    sums = _read_sums(sums_path)
    for remote in files:
        if remote.kind not in ("zip", "table"):
            raise ValueError(f"{remote.name}: unknown kind {remote.kind!r}; use 'zip' or 'table'")
        if _done(remote, dest):
            log(f"{remote.name}: already unpacked in {dest}, skipped")
            continue
        archive = dest / remote.name
        if archive.is_file():
            digest = _sha256(archive)  # complete by construction (renamed only when whole); maybe altered since
            log(f"{remote.name}: already downloaded, reusing it")
        else:
            digest = _fetch(remote, archive, timeout, log)
        if remote.sha256 and digest != remote.sha256.lower():
            archive.unlink()
            raise DownloadError(f"{remote.name} from {remote.url} has SHA-256 {digest}, expected {remote.sha256}; "
                                "deleted it. Run again; if it persists, the release changed: "
                                + manual_instructions(dest))
        if remote.name in sums and sums[remote.name] != digest:
            log(f"warning: {remote.name} differs from the checksum recorded in {sums_path}")
        sums[remote.name] = digest
        atomic_write_text(sums_path, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
        if remote.kind == "zip":
            _unpack(archive, dest, log)
        else:
            _write_metadata_csv(archive, dest)
            log(f"wrote {dest / METADATA_FILE}")
