"""HAM10000 download: fails fast offline with instructions; unpacks and records checksums (file:// URLs)."""
from __future__ import annotations

import hashlib
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

from fixtures import write_ham10000_fixture
from qana_keras.data import download
from qana_keras.data.download import DownloadError, RemoteFile, download_ham10000
from qana_keras.data.ham10000 import METADATA_FILE, PART_DIRS, load_metadata


def assert_instructions(message: str, dest: Path) -> None:
    assert "QANA_DATA_DIR" in message and str(dest) in message
    assert f"{PART_DIRS[0]}/" in message and METADATA_FILE in message and "10.7910/DVN/DBW86T" in message


def fail_fast(dest: Path, url: str, timeout: float = 2) -> str:
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        download_ham10000(dest, timeout=timeout, files=[RemoteFile("x.zip", url)], log=lambda m: None)
    assert time.perf_counter() - start < 15
    assert_instructions(str(info.value), dest)
    assert not list(dest.glob("*.zip*")) and not list(dest.glob(".x.zip*"))  # no partial file left
    return str(info.value)


def test_unresolvable_host_fails_fast(tmp_path):
    assert "x.zip" in fail_fast(tmp_path, "https://dataverse.invalid/api/access/datafile/1")  # .invalid never resolves


def test_connection_refused_fails_fast(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fail_fast(tmp_path, f"http://127.0.0.1:{port}/x.zip")


def test_silent_server_times_out(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # accepts the connection in the kernel but never answers
    try:
        start = time.perf_counter()
        assert "timed out" in fail_fast(tmp_path, f"http://127.0.0.1:{server.getsockname()[1]}/x.zip", timeout=1)
        assert time.perf_counter() - start < 5
    finally:
        server.close()


def test_default_table_offline(tmp_path):
    result = {}
    thread = threading.Thread(target=lambda: result.update(ok=_resolves("dataverse.harvard.edu")), daemon=True)
    thread.start()
    thread.join(3)
    if result.get("ok"):
        pytest.skip("this machine is online: the real download would fetch 2.8 GB")
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        download_ham10000(tmp_path, timeout=5, log=lambda m: None)
    assert time.perf_counter() - start < 15
    assert_instructions(str(info.value), tmp_path)


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


# --- the unpack and verify logic, with a local release ----------------------------------------------------


@pytest.fixture
def release(tmp_path) -> tuple[Path, list[RemoteFile]]:
    """A HAM10000-shaped release: two zips (one flat, one nested in a folder) and a Dataverse-style tab table."""
    src = write_ham10000_fixture(tmp_path / "src", n_lesions_per_class=1)
    out = tmp_path / "release"
    out.mkdir()
    for i, part in enumerate(PART_DIRS):
        with zipfile.ZipFile(out / f"{part}.zip", "w") as z:
            for p in sorted((src / part).iterdir()):
                z.write(p, f"{part}/{p.name}" if i else p.name)
            z.writestr("__MACOSX/._junk", b"resource fork")
    lines = (src / METADATA_FILE).read_text().splitlines()
    tab = "\n".join("\t".join(f'"{v}"' if not v.replace(".", "").isdigit() else v for v in line.split(","))
                    for line in lines) + "\n"
    (out / "HAM10000_metadata.tab").write_text(tab)
    files = [RemoteFile(f"{p}.zip", (out / f"{p}.zip").as_uri()) for p in PART_DIRS]
    files.append(RemoteFile("HAM10000_metadata.tab", (out / "HAM10000_metadata.tab").as_uri(), kind="table"))
    return out, files


def test_download_unpacks_and_records_sums(tmp_path, release):
    out, files = release
    dest = tmp_path / "dest"
    messages = []
    download_ham10000(dest, files=files, log=messages.append)
    df = load_metadata(dest, check_images=True)
    assert len(df) == len(load_metadata(out.parent / "src"))
    assert {Path(p).parent.name for p in df["path"]} == set(PART_DIRS)
    assert not list(dest.glob("**/__MACOSX")) and not list(dest.glob(".*"))
    sums = (dest / "SHA256SUMS").read_text().splitlines()
    expected = [f"{hashlib.sha256((out / f.name).read_bytes()).hexdigest()}  {f.name}"
                for f in sorted(files, key=lambda f: f.name)]
    assert sums == expected
    assert any("unpacked" in m for m in messages)

    # A re-run finds everything in place and fetches nothing (the URLs are gone now).
    broken = [RemoteFile(f.name, "file:///nonexistent/" + f.name, kind=f.kind) for f in files]
    download_ham10000(dest, files=broken, log=lambda m: None)


def test_pinned_checksum_mismatch(tmp_path, release):
    _, files = release
    bad = RemoteFile(files[0].name, files[0].url, sha256="0" * 64)
    with pytest.raises(DownloadError, match="expected 0000"):
        download_ham10000(tmp_path / "dest", files=[bad], log=lambda m: None)
    assert not (tmp_path / "dest" / files[0].name).exists()  # deleted, so a re-run downloads again
    good = RemoteFile(files[0].name, files[0].url, sha256=hashlib.sha256(Path(files[0].url[7:]).read_bytes()).hexdigest())
    download_ham10000(tmp_path / "dest", files=[good], log=lambda m: None)
    assert (tmp_path / "dest" / PART_DIRS[0]).is_dir()


def test_zip_slip_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escaped.jpg", b"x")
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="outside the target folder"):
        download_ham10000(dest, files=[RemoteFile("evil.zip", evil.as_uri())], log=lambda m: None)
    assert not (tmp_path / "escaped.jpg").exists() and not (dest / "evil").exists()


def test_corrupt_zip(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DownloadError, match="not a valid zip"):
        download_ham10000(tmp_path / "dest", files=[RemoteFile("bad.zip", bad.as_uri())], log=lambda m: None)


def test_table_without_metadata_columns(tmp_path):
    table = tmp_path / "t.tab"
    table.write_text("a\tb\n1\t2\n")
    with pytest.raises(DownloadError, match="lacks column"):
        download_ham10000(tmp_path / "dest", files=[RemoteFile("t.tab", table.as_uri(), kind="table")],
                          log=lambda m: None)


def test_default_table_names_the_release():
    names = [f.name for f in download.FILES]
    assert names == ["HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip", "HAM10000_metadata.tab"]
    assert all("dataverse.harvard.edu/api/access/datafile/" in f.url for f in download.FILES)
