"""Downloads from a local HTTP server (resume, restart, retries, verification) and safe extraction."""

import hashlib
import io
import os
import random
import re
import socket
import tarfile
import zipfile

import pytest

import local_http
from spml_tf.core import download
from spml_tf.core.download import Archive
from spml_tf.core.errors import DataError

BODY = random.Random(0).randbytes(10_000)
NAME = "data.tar"
K = 3_000  # where interrupted transfers are cut


@pytest.fixture
def server():
    """A local HTTP server serving BODY as NAME; yields its state."""
    with local_http.serve({NAME: BODY}) as state:
        state.cut_after = K
        yield state


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download, "RETRY_BACKOFF_SECONDS", 0.0)


def archive_for(url, body=BODY):
    return Archive(url, len(body), hashlib.md5(body).hexdigest())


def fetch(archive, directory, log=None):
    return download.fetch(archive, str(directory), log=log or (lambda message: None), chunk_bytes=1024, timeout=5)


# ---------------------------------------------------------------- fetch


def test_plain_download(server, tmp_path):
    path = fetch(archive_for(server.url(NAME)), tmp_path)
    assert path == str(tmp_path / NAME)
    assert (tmp_path / NAME).read_bytes() == BODY
    assert not (tmp_path / (NAME + ".part")).exists()
    assert server.requests == [("/" + NAME, None)]


def test_interrupted_transfer_resumes_where_it_stopped(server, tmp_path):
    server.cut_first = 1
    fetch(archive_for(server.url(NAME)), tmp_path)
    assert (tmp_path / NAME).read_bytes() == BODY
    assert server.requests == [("/" + NAME, None), ("/" + NAME, f"bytes={K}-")]


def test_part_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(BODY[:K])
    fetch(archive_for(server.url(NAME)), tmp_path)
    assert (tmp_path / NAME).read_bytes() == BODY
    assert server.requests == [("/" + NAME, f"bytes={K}-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    (tmp_path / (NAME + ".part")).write_bytes(b"x" * K)  # kept if the download appended instead of restarting
    messages = []
    fetch(archive_for(server.url(NAME)), tmp_path, log=messages.append)
    assert (tmp_path / NAME).read_bytes() == BODY
    assert server.requests == [("/" + NAME, f"bytes={K}-")]
    assert any("restarting from zero" in message for message in messages)


def test_range_not_satisfiable_restarts_from_zero(server, tmp_path):
    server.refuse_range = True
    (tmp_path / (NAME + ".part")).write_bytes(b"x" * K)
    fetch(archive_for(server.url(NAME)), tmp_path)
    assert (tmp_path / NAME).read_bytes() == BODY
    assert server.requests == [("/" + NAME, f"bytes={K}-"), ("/" + NAME, None)]


def test_too_many_interruptions_keep_the_part_and_a_rerun_resumes(server, tmp_path):
    server.cut_first, server.cut_after = 4, 1_000
    archive = archive_for(server.url(NAME))
    with pytest.raises(DataError, match="4000 of 10000 bytes are kept.*re-run the same command to resume"):
        fetch(archive, tmp_path)
    assert len(server.requests) == 1 + download.NETWORK_RETRIES
    assert (tmp_path / (NAME + ".part")).read_bytes() == BODY[:4_000]
    fetch(archive, tmp_path)
    assert (tmp_path / NAME).read_bytes() == BODY
    assert server.requests[-1] == ("/" + NAME, "bytes=4000-")


def test_md5_mismatch_deletes_the_download(server, tmp_path):
    wrong = bytes(b ^ 1 for b in BODY)
    server.files[NAME] = wrong
    archive = archive_for(server.url(NAME))
    with pytest.raises(DataError, match=f"MD5 is {hashlib.md5(wrong).hexdigest()}, expected {archive.md5}"):
        fetch(archive, tmp_path)
    assert os.listdir(tmp_path) == []


def test_larger_file_than_published_is_refused(server, tmp_path):
    server.files[NAME] = BODY + b"more"
    with pytest.raises(DataError, match="published size is 10000"):
        fetch(archive_for(server.url(NAME)), tmp_path)
    assert os.listdir(tmp_path) == []


def test_part_larger_than_published_is_deleted(server, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(BODY + b"more")
    with pytest.raises(DataError, match="more than the 10000"):
        fetch(archive_for(server.url(NAME)), tmp_path)
    assert os.listdir(tmp_path) == []
    assert server.requests == []


def test_existing_download_is_verified_once_without_a_request(server, tmp_path, monkeypatch):
    (tmp_path / NAME).write_bytes(BODY)
    archive = archive_for(server.url(NAME))
    assert fetch(archive, tmp_path) == str(tmp_path / NAME)
    assert (tmp_path / (NAME + download.VERIFIED_SUFFIX)).exists()

    def no_hashing(*args):
        raise AssertionError("the sidecar should have spared hashing the file again")

    with monkeypatch.context() as patch:
        patch.setattr(download, "_digest", no_hashing)
        fetch(archive, tmp_path)
    assert server.requests == []


def test_sidecar_is_not_trusted_once_the_file_changed(server, tmp_path):
    path = tmp_path / NAME
    path.write_bytes(BODY)
    archive = archive_for(server.url(NAME))
    fetch(archive, tmp_path)
    path.write_bytes(bytes(len(BODY)))  # same size, other bytes, newer mtime
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=f"expected {archive.md5}; delete .*{NAME} and re-run"):
        fetch(archive, tmp_path)
    assert server.requests == []


def test_not_found_names_the_url(server, tmp_path):
    url = server.url("missing.tar")
    with pytest.raises(DataError, match=f"{re.escape(url)}: HTTP error 404"):
        fetch(archive_for(url), tmp_path)
    assert len(server.requests) == 1  # an HTTP error is an answer: no retries


def test_unreachable_server_is_a_data_error(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="failed 4 times.*re-run the same command to resume"):
        fetch(archive_for(f"http://127.0.0.1:{port}/{NAME}"), tmp_path)


def test_with_mirror_keeps_size_and_md5():
    official = download.ARCHIVES["coco"][1]
    mirrored = download.with_mirror(official, "https://mirror.example/coco/")
    assert mirrored.url == "https://mirror.example/coco/train2014.zip"
    assert (mirrored.num_bytes, mirrored.md5, mirrored.filename) == (official.num_bytes, official.md5, official.filename)


@pytest.mark.parametrize("dataset", sorted(download.ARCHIVES))
def test_published_archives_are_well_formed(dataset):
    for archive in download.ARCHIVES[dataset]:
        assert re.fullmatch(r"[0-9a-f]{32}", archive.md5)
        assert archive.num_bytes > 0
        assert archive.filename == archive.url.rsplit("/", 1)[1]


# ---------------------------------------------------------------- extract

FILES = {"top/a.txt": b"alpha", "top/sub/b.txt": b"beta"}


def add_file(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path, extra=()):
    """A tar of FILES followed by the `extra` TarInfos (links, FIFOs, odd names: no data)."""
    with tarfile.open(path, "w:gz" if str(path).endswith(".gz") else "w") as tar:
        for name, data in FILES.items():
            add_file(tar, name, data)
        for info in extra:
            tar.addfile(info)
    return str(path)


def make_zip(path, extra_names=()):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**FILES, **{name: b"evil" for name in extra_names}}.items():
            archive.writestr(name, data)
    return str(path)


def tar_info(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("filename", ["data.tar", "data.tar.gz", "data.zip"])
def test_extract(tmp_path, filename):
    archive_path = tmp_path / filename
    make_zip(archive_path) if filename.endswith(".zip") else make_tar(archive_path)
    out = tmp_path / "out"
    download.extract(str(archive_path), str(out), log=lambda message: None)
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    assert (out / (download.EXTRACTED_PREFIX + filename)).exists()


def unsafe_archives(tmp_path):
    evil = str(tmp_path / "evil.txt")
    return {
        "dotdot": make_tar(tmp_path / "dotdot.tar", [tar_info("../evil.txt")]),
        "absolute": make_tar(tmp_path / "absolute.tar", [tar_info(evil)]),
        "symlink": make_tar(tmp_path / "symlink.tar", [tar_info("top/link", tarfile.SYMTYPE, "../../evil.txt")]),
        "absolute symlink": make_tar(tmp_path / "abs_symlink.tar", [tar_info("link", tarfile.SYMTYPE, evil)]),
        "hardlink": make_tar(tmp_path / "hardlink.tar", [tar_info("link", tarfile.LNKTYPE, "../evil.txt")]),
        "fifo": make_tar(tmp_path / "fifo.tar", [tar_info("top/fifo", tarfile.FIFOTYPE)]),
        "zip dotdot": make_zip(tmp_path / "dotdot.zip", ["../evil.txt"]),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "absolute symlink", "hardlink", "fifo", "zip dotdot"])
def test_unsafe_member_is_refused_before_anything_is_extracted(tmp_path, case):
    archive_path = unsafe_archives(tmp_path)[case]
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"refusing to extract {re.escape(archive_path)}: member"):
        download.extract(archive_path, str(out), log=lambda message: None)
    assert not (tmp_path / "evil.txt").exists()
    assert not out.exists() or os.listdir(out) == []  # the safe members come first and were not written either


def test_marker_makes_a_second_extract_a_no_op(tmp_path):
    archive_path = make_tar(tmp_path / "data.tar")
    out = tmp_path / "out"
    download.extract(archive_path, str(out), log=lambda message: None)
    (out / "top/a.txt").unlink()
    messages = []
    download.extract(archive_path, str(out), log=messages.append)
    assert not (out / "top/a.txt").exists()
    assert "already extracted" in messages[0]


@pytest.mark.parametrize("filename", ["data.tar", "data.tar.gz", "data.zip"])
def test_corrupt_archive_says_delete_and_rerun(tmp_path, filename):
    archive_path = tmp_path / filename
    archive_path.write_bytes(b"not an archive " * 100)
    with pytest.raises(DataError, match="is corrupt .*delete it and re-run"):
        download.extract(str(archive_path), str(tmp_path / "out"), log=lambda message: None)


def test_truncated_archive_says_delete_and_rerun(tmp_path):
    archive_path = tmp_path / "data.tar.gz"
    make_tar(archive_path)
    archive_path.write_bytes(archive_path.read_bytes()[:-30])
    with pytest.raises(DataError, match="is corrupt .*delete it and re-run"):
        download.extract(str(archive_path), str(tmp_path / "out"), log=lambda message: None)
    assert not (tmp_path / "out" / (download.EXTRACTED_PREFIX + "data.tar.gz")).exists()


# ---------------------------------------------------------------- a file known by its SHA-256 prefix (weights)


def test_a_file_of_unknown_size_verified_by_its_sha256_prefix_resumes(server, tmp_path):
    """torchvision's weights: no published size, the first 8 hex digits of the SHA-256 in the name."""
    server.cut_first = 1
    prefix = hashlib.sha256(BODY).hexdigest()[:8]
    archive = Archive(server.url(NAME), sha256_prefix=prefix)
    said = []
    assert fetch(archive, tmp_path, log=said.append) == str(tmp_path / NAME)
    assert (tmp_path / NAME).read_bytes() == BODY
    assert server.requests == [("/" + NAME, None), ("/" + NAME, f"bytes={K}-")]
    assert fetch(archive, tmp_path, log=said.append) == str(tmp_path / NAME)  # verified once, then trusted
    assert len(server.requests) == 2 and said[-1].endswith("is already downloaded")


def test_a_wrong_sha256_prefix_deletes_the_download(server, tmp_path):
    archive = Archive(server.url(NAME), sha256_prefix="00000000")
    with pytest.raises(DataError, match=r"SHA-256 is [0-9a-f]{64}, expected one starting 00000000; the corrupt "
                                        "download was deleted"):
        fetch(archive, tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_published_file_needs_a_checksum():
    with pytest.raises(ValueError, match="needs an MD5 or a SHA-256 prefix"):
        Archive("http://example.invalid/x")
