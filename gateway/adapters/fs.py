"""The one way the gateway writes a file: ``write_atomic``. Every adapter and composition root uses it.

Invariants: a reader sees the old content or the new, never a mix; after ``write_atomic`` returns, the
new content and its directory entry survive a power cut; the temporary file is created exclusively,
with an unpredictable name, in the target's own directory and without following a symlink, so a link
planted there by another user redirects nothing; the file gets exactly the ``mode`` asked for,
whatever the umask. A symlink at ``path`` itself is replaced, never written through. On any error the
temporary file is removed and the old file stays as it was.

The one file not written this way is a resumable download (``tuf_client``), which is appended to across
runs; it is opened without following links and verified against the signed hash before use.
This module imports only the standard library; the other adapters may import it (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["fsync_dir", "replace_symlink", "write_atomic"]


@contextlib.contextmanager
def _removed_on_error(tmp: str | Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o600, exclusive: bool = False) -> None:
    """Replace ``path`` with ``data``: exclusive temporary file, fsync, rename, fsync of the directory.

    Args:
        path: the file to write; its directory must exist.
        data: the whole new content.
        mode: the file's permission bits (not reduced by the umask).
        exclusive: never replace an existing ``path`` (a key): the new file is linked in, which fails
            when anything, a link included, is already there.

    Raises:
        FileExistsError: ``exclusive`` and ``path`` exists; nothing was changed.
        OSError: the directory cannot be written (read-only, full, missing); nothing was changed. Only
            the final fsync of the directory can fail after the file was put in place.
    """
    target = Path(path)
    # mkstemp: O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600, a random name
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:40]}.", suffix=".tmp")
    with _removed_on_error(tmp):
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, target, follow_symlinks=False)
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    fsync_dir(target.parent)


def replace_symlink(link: str | Path, points_to: str | Path) -> None:
    """Point the symlink ``link`` at ``points_to`` in one rename (a reader never finds it missing).

    Raises:
        OSError: the directory cannot be written; the old link stays.
    """
    target = Path(link)
    for _ in range(100):  # a unique temporary name; ``symlink`` itself never follows or overwrites
        tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
        try:
            os.symlink(points_to, tmp)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{target.parent}: no free temporary name")
    with _removed_on_error(tmp):
        os.replace(tmp, target)
    fsync_dir(target.parent)
