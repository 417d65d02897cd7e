"""python-tuf's ngclient ``Updater`` -> ``UpdateClient``; the only module that imports tuf or urllib3.

Every refresh starts from the root shipped in the image (``bootstrap=``) and walks the root versions in
the local cache and on the server, so a key rotation is followed and a stolen old key is not enough.
The timestamp, snapshot and targets cached in ``{ota.dir}/metadata`` are what rollback and freeze
protection compare against; that directory is the updater's alone.

Target downloads resume: ``ResumableFetcher`` keeps the bytes received so far in
``{ota.dir}/partial/`` and asks for the rest with an HTTP ``Range`` request on the next try. The
bytes are only trusted after ngclient has checked the whole file's length and hashes against the signed
targets metadata; a file that fails that check is deleted, never resumed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import urllib3
from tuf.api import exceptions
from tuf.api._payload import TargetFile  # re-exported by tuf.api.metadata without __all__
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from ..errors import UpdateError
from ..model import Release, release_from_target

__all__ = ["ResumableFetcher", "TufUpdateClient"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class ResumableFetcher(FetcherInterface):
    """HTTP(S) GET through urllib3; URLs under ``resume_prefix`` continue from a partial file."""

    def __init__(self, *, partial_dir: Path, resume_prefix: str, timeout_s: float = 30.0,
                 user_agent: str = "battery-gateway") -> None:
        self.partial_dir = partial_dir
        self.resume_prefix = resume_prefix
        self.last_partial: Path | None = None  # the partial file of the latest target download
        self._http = urllib3.PoolManager(headers={"User-Agent": user_agent}, retries=False,
                                         timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s))

    def partial_path(self, url: str) -> Path:
        return self.partial_dir / hashlib.sha256(url.encode()).hexdigest()[:32]

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.resume_prefix):
            return self._stream(self._get(url, {}))
        part = self.last_partial = self.partial_path(url)
        have = part.stat().st_size if part.exists() else 0
        response = self._get(url, {"Range": f"bytes={have}-"} if have else {})
        if have and response.status == 416:  # what we hold is not a prefix of this file: start again
            response.release_conn()
            part.unlink()
            have, response = 0, self._get(url, {})
        if response.status != 206:
            have = 0  # the server sent the whole file
        elif have:
            log.info("resuming download of %s at %d bytes", url.rsplit("/", 1)[-1], have)
        return self._resume(part, have, response)

    def _get(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            response = self._http.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"{url}: timed out") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        if response.status >= 400 and response.status != 416:
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return response

    def _stream(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(_CHUNK)
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError("download stalled") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"download interrupted: {exc}") from exc
        finally:
            response.release_conn()

    def _resume(self, part: Path, have: int, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        self.partial_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # appended to across runs, so not fs.write_atomic; never through a link, verified before use
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | (0 if have else os.O_TRUNC), 0o600)
        with os.fdopen(fd, "r+b") as f:
            if have:
                while chunk := f.read(_CHUNK):
                    yield chunk
                f.truncate(have)
            for chunk in self._stream(response):
                f.write(chunk)
                f.flush()  # what arrived survives a dropped link or a power cut
                yield chunk


class TufUpdateClient:
    """Checks and downloads release bundles through a TUF repository."""

    def __init__(self, *, metadata_url: str, targets_url: str, trusted_root: str, cache_dir: str) -> None:
        """Raises: UpdateError (kind ``refused``) when the shipped root cannot be read."""
        try:
            self._root = Path(trusted_root).read_bytes()
        except OSError as exc:
            raise UpdateError(f"ota.trusted_root: cannot read {trusted_root}: {exc.strerror}", kind="refused") \
                from exc
        cache = Path(cache_dir)
        self._metadata_dir = cache / "metadata"
        self._targets_dir = cache / "downloads"
        for d in (self._metadata_dir, self._targets_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._metadata_url = metadata_url.rstrip("/") + "/"
        self._targets_url = (targets_url or metadata_url.rstrip("/").rsplit("/", 1)[0] + "/targets").rstrip("/") + "/"
        self.fetcher = ResumableFetcher(partial_dir=cache / "partial", resume_prefix=self._targets_url)
        self._config = UpdaterConfig()  # metadata size limits: ngclient's defaults; the bundle's is ota.max_bundle_mb
        self._updater: Updater | None = None
        self._info: TargetFile | None = None

    def check(self, target: str) -> Release:
        """Refresh top-level metadata and describe ``target``.

        Raises:
            UpdateError: kind ``refused`` for verification failures (bad signature, expired, rollback,
                mix-and-match, unknown target), kind ``download`` when the repository is unreachable.
        """
        try:
            self._updater = Updater(str(self._metadata_dir), self._metadata_url, str(self._targets_dir),
                                    self._targets_url, self.fetcher, self._config, bootstrap=self._root)
            self._updater.refresh()
            info = self._updater.get_targetinfo(target)
        except exceptions.DownloadError as exc:
            raise UpdateError(f"TUF repository {self._metadata_url} unreachable: {_why(exc)}", kind="download") \
                from exc
        except (exceptions.RepositoryError, ValueError) as exc:
            raise UpdateError(f"TUF metadata refused: {type(exc).__name__}: {exc}", kind="refused") from exc
        if info is None:
            raise UpdateError(f"TUF targets metadata has no target {target!r} (ota.target)", kind="refused")
        self._info = info
        return release_from_target(info.path, info.length, info.custom)

    def download(self, release: Release) -> str:
        """Download ``release`` (resuming a partial file), verified against the targets metadata.

        Raises:
            UpdateError: kind ``download`` (the partial file is kept), or ``refused`` (hash or length
                mismatch: the partial file is deleted).
        """
        if self._updater is None or self._info is None or self._info.path != release.name:
            raise RuntimeError("download() before check() of the same target")
        cached = self._updater.find_cached_target(self._info)
        if cached:
            return cached
        self.fetcher.last_partial = None
        try:
            path = self._updater.download_target(self._info)
        except exceptions.DownloadError as exc:
            part = self.fetcher.last_partial or Path("/nonexistent")
            if isinstance(exc, exceptions.DownloadLengthMismatchError):
                part.unlink(missing_ok=True)
                raise UpdateError(f"{release.name}: longer than its signed length: refused", kind="refused") \
                    from exc
            held = part.stat().st_size if part.exists() else 0
            raise UpdateError(f"{release.name}: download interrupted at {held} of {release.length} bytes "
                              f"({_why(exc)}); the next run resumes", kind="download") from exc
        except exceptions.RepositoryError as exc:
            if self.fetcher.last_partial:
                self.fetcher.last_partial.unlink(missing_ok=True)
            raise UpdateError(f"{release.name}: does not match the signed targets metadata ({exc}): refused",
                              kind="refused") from exc
        if self.fetcher.last_partial:
            self.fetcher.last_partial.unlink(missing_ok=True)
        return path


def _why(exc: BaseException) -> str:
    while exc.__cause__ is not None and str(exc) == "":
        exc = exc.__cause__
    return str(exc) or type(exc).__name__
