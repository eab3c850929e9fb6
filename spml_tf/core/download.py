"""Fetches published files (the VOC 2012 / COCO 2014 archives, torchvision's weights): resumable,
verified, archives safely extracted.

Standard library only. A download goes to `<file>.part` and is renamed to
`<file>` once its size and checksum (MD5, or the SHA-256 prefix a file's name
carries) match the published ones, so a file without the suffix is always whole. An interrupted download is resumed with an HTTP
Range request, here (a few retries) or by re-running the same command.
Anything the user can fix is raised as DataError naming the URL or file.
"""

import dataclasses
import hashlib
import http.client
import json
import os
import posixpath
import re
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

from spml_tf.core.errors import DataError, UsageError

NETWORK_RETRIES = 3
RETRY_BACKOFF_SECONDS = 2.0  # doubled after each failed attempt: 2, 4, 8 s
PROGRESS_SECONDS = 1.0
VERIFIED_SUFFIX = ".md5-ok"  # sidecar: the file's size and mtime when its MD5 last matched
EXTRACTED_PREFIX = ".extracted-"  # marker written once an archive is fully extracted
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")

# Errors after which the bytes received so far are good and the transfer can resume.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
# What a truncated or damaged archive raises while it is read.
_CORRUPT_ARCHIVE_ERRORS = (tarfile.ReadError, zipfile.BadZipFile, EOFError, zlib.error)
# tarfile's own extraction-time safety checks (Python >= 3.11.4), on top of ours.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


@dataclasses.dataclass(frozen=True)
class Archive:
    """One published file: where it lives, its size (None: the server says) and its MD5 or SHA-256 prefix."""

    url: str
    num_bytes: int = None
    md5: str = ""
    sha256_prefix: str = ""  # torchvision's weights carry the first 8 hex digits of their SHA-256 in their names

    def __post_init__(self):
        if not (self.md5 or self.sha256_prefix):
            raise ValueError(f"{self.url}: a published file needs an MD5 or a SHA-256 prefix to be verified")

    @property
    def checksum(self):
        """What the file is verified against, as the sidecar records it: the MD5, or `sha256:<prefix>...`."""
        return self.md5 or f"sha256:{self.sha256_prefix}..."

    @property
    def filename(self):
        return posixpath.basename(urllib.parse.urlsplit(self.url).path)


# The official releases, with the sizes and MD5s their publishers give.
ARCHIVES = {
    "voc": (
        Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                1999639040, "6cd6e144f989b92b3379bac3b3de84fd"),
    ),
    "coco": (
        Archive("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                252872794, "0a379cfc70b0e71301e0f377548639bd"),
        Archive("http://images.cocodataset.org/zips/train2014.zip", 13510573713, "0da8c0bd3d6becc4dcb32757491aca88"),
        Archive("http://images.cocodataset.org/zips/val2014.zip", 6645013297, "a3d79f5ed8d289b7a7554ce06a5782b3"),
    ),
}


def with_mirror(archive, mirror):
    """The same archive (same size and MD5) fetched from `mirror`, a base URL."""
    if "://" not in mirror:
        raise UsageError(f"the mirror must be a base URL such as http://host/path, got {mirror!r}")
    return dataclasses.replace(archive, url=mirror.rstrip("/") + "/" + archive.filename)


# ---------------------------------------------------------------- download


def fetch(archive, directory, log=print, chunk_bytes=1 << 20, timeout=60):
    """Downloads `archive` to directory/filename (resuming a .part, verifying it) and returns that path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, archive.filename)
    if os.path.exists(path):
        _check_downloaded(archive, path, log, chunk_bytes)
        return path
    part = path + ".part"
    for attempt in range(NETWORK_RETRIES + 1):
        try:
            _download(archive, part, log, chunk_bytes, timeout)
            break
        except urllib.error.HTTPError as error:  # an answer, not a lost connection: retrying will not help
            raise DataError(f"{archive.url}: HTTP error {error.code} ({error.reason}); "
                            "check the URL or download from a mirror") from error
        except _NETWORK_ERRORS as error:
            if attempt == NETWORK_RETRIES:
                of = f" of {archive.num_bytes}" if archive.num_bytes else ""
                raise DataError(f"downloading {archive.url} failed {attempt + 1} times ({error}); "
                                f"{_size(part)}{of} bytes are kept in {part}: "
                                "re-run the same command to resume") from error
            delay = RETRY_BACKOFF_SECONDS * 2**attempt
            log(f"{archive.url}: {error}; resuming in {delay:g} s (retry {attempt + 1} of {NETWORK_RETRIES})")
            time.sleep(delay)
    problem = _checksum_problem(archive, part, chunk_bytes)
    if problem:
        os.remove(part)
        raise DataError(f"{archive.url}: {problem}; the corrupt download was deleted, re-run the same command to "
                        "download it again")
    os.replace(part, path)
    _mark_verified(path, archive.checksum)
    return path


def _checksum_problem(archive, path, chunk_bytes):
    """Why the file at `path` is not the published one ("MD5 is ..., expected ..."), or None."""
    if archive.md5:
        actual = _digest(path, hashlib.md5(usedforsecurity=False), chunk_bytes)
        return None if actual == archive.md5 else f"MD5 is {actual}, expected {archive.md5}"
    actual = _digest(path, hashlib.sha256(), chunk_bytes)
    return (None if actual.startswith(archive.sha256_prefix)
            else f"SHA-256 is {actual}, expected one starting {archive.sha256_prefix}")


def _check_downloaded(archive, path, log, chunk_bytes):
    """Checks an existing download's size and checksum (hashing only when the sidecar does not vouch for it)."""
    size = os.path.getsize(path)
    if archive.num_bytes is not None and size != archive.num_bytes:
        raise DataError(f"{path} has {size} bytes, {archive.url} has {archive.num_bytes}; delete {path} and re-run")
    if not _is_verified(path, archive.checksum):
        log(f"verifying the checksum of {path}")
        problem = _checksum_problem(archive, path, chunk_bytes)
        if problem:
            raise DataError(f"{path}: {problem}; delete {path} and re-run")
        _mark_verified(path, archive.checksum)
    log(f"{path} is already downloaded")


def _download(archive, part, log, chunk_bytes, timeout):
    """Appends the missing bytes of `archive` to `part` in one request; a network error if cut short.

    Without a published size, the total is what the server announces (and the
    checksum, checked afterwards, catches the rest).
    """
    start = _size(part)
    if archive.num_bytes is not None and start > archive.num_bytes:
        os.remove(part)
        raise DataError(f"{part} had {start} bytes, more than the {archive.num_bytes} of {archive.url}; "
                        "deleted it, re-run the same command to download again")
    if start == archive.num_bytes:
        return
    response, start = _open(archive, start, log, timeout)
    with response:
        length = response.headers.get("Content-Length")
        served = start + int(length) if length is not None else None
        if archive.num_bytes is not None and served is not None and served != archive.num_bytes:
            raise DataError(f"{archive.url} serves {served} bytes, the published size is "
                            f"{archive.num_bytes}; check the URL or the mirror")
        total = archive.num_bytes if archive.num_bytes is not None else served
        done, progress = start, _Progress(log, archive.filename, total, start)
        with open(part, "ab" if start else "wb") as out:
            while (total is None or done <= total) and (chunk := response.read(chunk_bytes)):
                out.write(chunk)
                done += len(chunk)
                progress.report(done)
    if total is not None and done > total:
        os.remove(part)
        raise DataError(f"{archive.url} sent more than the {total} bytes it announced; "
                        "deleted the download, check the URL or the mirror")
    if total is not None and done < total:  # http.client ends a short body quietly instead of raising
        raise ConnectionError(f"connection closed after {done} of {total} bytes")


def _open(archive, start, log, timeout):
    """Requests the bytes from `start` on; returns the response and where its body starts (0 on a restart)."""
    if start:
        request = urllib.request.Request(archive.url, headers={"Range": f"bytes={start}-"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            if error.code != 416:
                raise
            error.close()
            log(f"{archive.url}: the server cannot resume at byte {start}; restarting from zero")
        else:
            if response.status == 200:
                log(f"{archive.url}: the server does not resume downloads; restarting from zero")
                return response, 0
            if response.status == 206 and _range_start(response) == start:
                return response, start
            response.close()
            log(f"{archive.url}: the server answered with another byte range; restarting from zero")
    return urllib.request.urlopen(archive.url, timeout=timeout), 0


def _range_start(response):
    """The first byte of a 206 response's Content-Range ("bytes N-M/T"), or None."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


class _Progress:
    """Logs MB done / MB total (when known) and the speed, at most once per PROGRESS_SECONDS and at the end."""

    def __init__(self, log, filename, total, start):
        self.log, self.filename, self.total, self.start = log, filename, total, start
        self.began = self.last = time.monotonic()

    def report(self, done):
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS and (self.total is None or done < self.total):
            return
        self.last = now
        speed = (done - self.start) / max(now - self.began, 1e-6) / 1e6
        total = f" / {self.total / 1e6:.1f}" if self.total is not None else ""
        self.log(f"{self.filename}: {done / 1e6:.1f}{total} MB, {speed:.1f} MB/s")


def _size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def _digest(path, digest, chunk_bytes):
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path, checksum):
    """What the sidecar records: a changed size or mtime means the file must be hashed again."""
    stat = os.stat(path)
    return {"md5": checksum, "num_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _mark_verified(path, checksum):
    with open(path + VERIFIED_SUFFIX, "w") as f:
        json.dump(_stamp(path, checksum), f)


def _is_verified(path, checksum):
    try:
        with open(path + VERIFIED_SUFFIX) as f:
            return json.load(f) == _stamp(path, checksum)
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- extraction


def extract(archive_path, directory, log=print):
    """Extracts a .tar/.tar.gz/.tgz or .zip into `directory`, refusing any member that would land outside it.

    Every member is checked before anything is written. A marker file written
    last makes a repeated call a no-op; an interrupted extraction is redone.
    """
    name = os.path.basename(archive_path)
    marker = os.path.join(directory, EXTRACTED_PREFIX + name)
    if os.path.exists(marker):
        log(f"{archive_path} is already extracted in {directory} (delete {marker} to extract it again)")
        return
    root = os.path.realpath(directory)
    log(f"extracting {archive_path} into {directory}")
    try:
        if name.endswith(".zip"):
            _extract_zip(archive_path, root)
        elif name.endswith(TAR_SUFFIXES):
            _extract_tar(archive_path, root)
        else:
            raise UsageError(f"{archive_path}: not an archive this can extract ({', '.join(TAR_SUFFIXES)}, .zip)")
    except _CORRUPT_ARCHIVE_ERRORS as error:
        detail = " ".join(str(error).split())  # tarfile lists every method it tried, one per line
        raise DataError(f"{archive_path} is corrupt ({detail}); delete it and re-run") from error
    except tarfile.TarError as error:  # e.g. tarfile's data filter refusing a member our checks let through
        raise DataError(f"cannot extract {archive_path} ({error}); it is not the official archive: "
                        "delete it and re-run") from error
    with open(marker, "w") as f:
        f.write(archive_path + "\n")


def _extract_tar(archive_path, root):
    with tarfile.open(archive_path) as tar:
        members = tar.getmembers()
        for member in members:
            _refuse_if(_tar_member_danger(member, root), archive_path, member.name)
        os.makedirs(root, exist_ok=True)
        tar.extractall(root, members, **_TAR_FILTER)


def _extract_zip(archive_path, root):
    with zipfile.ZipFile(archive_path) as archive:
        for name in archive.namelist():
            _refuse_if(_path_danger(name, root), archive_path, name)
        os.makedirs(root, exist_ok=True)
        archive.extractall(root)


def _refuse_if(danger, archive_path, member_name):
    if danger:
        raise DataError(f"refusing to extract {archive_path}: member {member_name!r} is {danger}; "
                        "it is not the official archive, delete it and re-run")


def _tar_member_danger(member, root):
    """What makes this tar member unsafe to extract under `root`, or None."""
    danger = _path_danger(member.name, root)
    if danger:
        return danger
    if member.isdev():
        return "a device or FIFO"
    if member.issym():  # a symlink's target is relative to the link's own directory
        where = os.path.dirname(os.path.join(root, member.name))
        if not _inside(root, os.path.join(where, member.linkname)):
            return f"a symlink to {member.linkname!r}, outside the directory"
    if member.islnk() and not _inside(root, os.path.join(root, member.linkname)):
        return f"a hard link to {member.linkname!r}, outside the directory"
    return None


def _path_danger(name, root):
    """What makes member `name` land outside `root`, or None."""
    if os.path.isabs(name):
        return "an absolute path"
    if not _inside(root, os.path.join(root, name)):
        return "a path outside the directory"
    return None


def _inside(root, path):
    """Whether `path` resolves (following existing symlinks) to `root` or below it; `root` is a realpath."""
    return os.path.commonpath([root, os.path.realpath(path)]) == root
