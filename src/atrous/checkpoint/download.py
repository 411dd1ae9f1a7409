"""Download checkpoints into a local cache, atomically and with checksum verification.

Files land in ``$ATROUS_CACHE`` (default ``~/.cache/atrous``) under ``checkpoints/``; a file
already there is reused without any request. A download is streamed to a partial file next to its
destination and renamed into place only once it is complete and verified, so an interrupted or
corrupt transfer never leaves a file that a later run would trust.

Verification, whichever applies: the whole SHA-256 the model zoo records for the URL
(`model_zoo.sha256_of`); detectron2's naming convention, ``model_final_a8a355.pkl`` carrying the
first six hex digits of the SHA-256 of its content after the last underscore; torchvision's,
``resnet101-cd907fc2.pth`` carrying at least eight after the last hyphen; and a SHA-256 the server
names as the file's ETag (the Hugging Face hub does so for large files).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..utils.file_io import fsync_dir
from .errors import ChecksumMismatchError, DownloadError
from .model_zoo import DEFAULT_BASE_URL, ENV_BASE_URL, PREFIX, resolve_url, sha256_of

__all__ = ["cache_dir", "cached_file_path", "download", "expected_sha256_prefix"]

logger = logging.getLogger(__name__)

ENV_CACHE = "ATROUS_CACHE"
_CHUNK = 1 << 20
# `_<6 hex>.<ext>` at the end of the name, detectron2's convention. Exactly six, so that
# iteration-numbered files (`model_0000999.pth`, seven digits) are not mistaken for one.
_HASH_IN_NAME = re.compile(r"_([0-9a-f]{6})\.(?:pkl|pth|pt)$")
# `-<8 or more hex>.pth` at the end of the name, torchvision's (torch.hub's) convention.
_TORCHVISION_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """Root of the download cache: ``$ATROUS_CACHE``, else ``~/.cache/atrous``."""
    root = os.environ.get(ENV_CACHE)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "atrous"


def cached_file_path(url: str, *, root: str | os.PathLike[str] | None = None) -> Path:
    """Where `url` is (or will be) cached.

    ``detectron2://X`` and its ``https://dl.fbaipublicfiles.com/detectron2/X`` spelling share
    ``<cache>/checkpoints/detectron2/X`` whatever mirror serves them; other URLs are cached
    under ``<cache>/checkpoints/<host>/<path>``.
    """
    base = Path(root).expanduser() if root is not None else cache_dir()
    url = url.split("?", 1)[0]
    if url.startswith(PREFIX):
        rel = "detectron2/" + url[len(PREFIX) :]
    elif url.startswith(DEFAULT_BASE_URL):
        rel = "detectron2/" + url[len(DEFAULT_BASE_URL) :]
    else:
        parsed = urllib.parse.urlparse(url)
        host = re.sub(r"[^A-Za-z0-9._-]", "_", parsed.netloc) or "local"
        rel = f"{host}/{parsed.path.lstrip('/')}"
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise DownloadError(f"Cannot derive a cache file name from URL {url!r}")
    return base.joinpath("checkpoints", *parts)


def expected_sha256_prefix(filename: str) -> str | None:
    """The checksum embedded in a file name (``model_final_a8a355.pkl`` -> ``"a8a355"``,
    ``resnet101-cd907fc2.pth`` -> ``"cd907fc2"``)."""
    match = _HASH_IN_NAME.search(filename) or _TORCHVISION_HASH_IN_NAME.search(filename)
    return match.group(1) if match else None


def _server_sha256(headers) -> str | None:
    """A SHA-256 the server names as the content's ETag (Hugging Face's large files), else None."""
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").strip().removeprefix("W/").strip('"').lower()
        if _SHA256.fullmatch(value):
            return value
    return None


def _offline_advice(url: str, dest: Path) -> str:
    return (
        f"Without network access, download {url} elsewhere and put it at {dest} (it is used from "
        f"there without any request; {ENV_CACHE} moves that folder), or pass its local path "
        f"instead; set {ENV_BASE_URL} (detectron2://), ATROUS_TORCHVISION_URL or ATROUS_HF_URL "
        'to a reachable mirror; or, to train from scratch, set MODEL.WEIGHTS "".'
    )


def _fetch(
    url: str, partial: Path, *, progress: bool, timeout: float, dest: Path
) -> tuple[str, str | None]:
    """Stream `url` into `partial`; returns the SHA-256 hex digest of what was written and the
    SHA-256 the server named for it (None when it named none)."""
    request = urllib.request.Request(url, headers={"User-Agent": "atrous"})
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            announced = _server_sha256(response.headers)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with (
                open(partial, "wb") as f,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=partial.name.split(".partial", 1)[0].lstrip("."),
                    disable=not progress,
                ) as bar,
            ):
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    sha.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                # http.client returns b"" rather than raising when the peer closes early, so
                # completeness has to be checked against the announced length.
                if total is not None and received != total:
                    raise DownloadError(
                        f"Download of {url} was interrupted after {received} of {total} bytes; "
                        "nothing was cached. Run the command again."
                    )
                f.flush()
                os.fsync(f.fileno())
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"Download of {url} failed: HTTP {exc.code} {exc.reason}. Check the URL or model "
            f"name; to use a mirror set {ENV_BASE_URL}, or download the file yourself and pass "
            "its local path."
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(
            f"Download of {url} failed ({type(exc).__name__}: {exc}); nothing was cached. "
            + _offline_advice(url, dest)
        ) from exc
    return sha.hexdigest(), announced


def download(
    url: str,
    *,
    cache_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return a local copy of `url`, downloading it into the cache first when needed.

    Args:
        url: ``detectron2://...``, ``https://...`` or ``http://...`` (a query string is ignored).
        cache_root: cache directory; defaults to :func:`cache_dir`.
        progress: show a tqdm progress bar on stderr.
        timeout: seconds to wait on the connection before giving up.

    Returns:
        Path of the cached file.

    Raises:
        DownloadError: HTTP or network error, or an interrupted transfer (nothing is cached).
        ChecksumMismatchError: the content does not match the checksum in the file name (the
            download is deleted).
    """
    dest = cached_file_path(url, root=cache_root)
    if dest.is_file():
        logger.info("Using cached %s", dest)
        return dest
    http_url = resolve_url(url.split("?", 1)[0])
    if urllib.parse.urlparse(http_url).scheme not in ("http", "https"):
        raise DownloadError(f"Cannot download {url!r}: only http(s) and detectron2:// URLs work")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process so concurrent ranks downloading the same file never share a partial.
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    logger.info("Downloading %s to %s", http_url, dest)
    try:
        digest, announced = _fetch(http_url, partial, progress=progress, timeout=timeout, dest=dest)
        promises = [
            ("the model zoo records", sha256_of(url.split("?", 1)[0])),
            ("the file name promises", expected_sha256_prefix(dest.name)),
            ("the server announced", announced),
        ]
        for who, expected in promises:
            if expected is not None and not digest.startswith(expected):
                raise ChecksumMismatchError(
                    f"Checksum mismatch for {http_url}: {who} a SHA-256 starting with "
                    f"{expected[:16]}, the downloaded content has {digest[:16]}. The download "
                    "was deleted; run again, and if it persists the mirror serves a different "
                    "file."
                )
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return dest
