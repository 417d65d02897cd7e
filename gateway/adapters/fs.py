"""The one way the gateway writes a file (``write_atomic``) and the directories it writes into
(``safe_dir``). Every adapter and composition root uses them.

Invariants: a reader sees the old content or the new, never a mix; after ``write_atomic`` returns, the
new content and its directory entry survive a power cut; the file gets exactly the ``mode`` asked for,
whatever the umask. Someone with a local shell cannot redirect a write: the directory is opened
without following a link and must be ours or root's, and writable by nobody else unless it is sticky
(like /tmp, where nobody can rename or remove our files); the temporary file is created exclusively,
with an unpredictable name, inside that directory (by its file descriptor, so the directory cannot be
swapped meanwhile); a link planted at the target itself is replaced, never written through, and in a
sticky directory another user's file at the target makes the rename fail rather than be replaced. On
any error the temporary file is removed and the old file stays as it was.

The one file not written this way is a resumable download (``tuf_client``), which is appended to across
runs; it is opened without following links and verified against the signed hash before use.
This module imports only the standard library; the other adapters may import it (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["read_regular", "replace_symlink", "safe_dir", "write_atomic"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse(path: Path, why: str) -> OSError:
    return PermissionError(errno.EPERM, f"{path} {why}; refusing to write there", str(path))


def _check_dir(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if st.st_uid not in (os.geteuid(), 0):
        raise _refuse(path, f"is owned by another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise _refuse(path, f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})")


@contextlib.contextmanager
def _open_dir(path: Path) -> Iterator[int]:
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
            raise _refuse(path, "is a symbolic link") from None
        raise
    try:
        _check_dir(fd, path)
        yield fd
    finally:
        os.close(fd)


def safe_dir(path: str | Path, *, mode: int = 0o700) -> Path:
    """Create ``path`` (and missing parents) with ``mode`` if it is missing, then check it like every
    directory the gateway writes into.

    Raises:
        OSError: it cannot be created, is a link, belongs to another user, or others can write it.
    """
    p = Path(path)
    try:
        os.mkdir(p, mode)
        os.chmod(p, mode)  # mkdir's mode is reduced by the umask
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        return safe_dir(p, mode=mode)
    except FileExistsError:
        pass
    with _open_dir(p):
        return p


def _temporary_name(target: str) -> str:
    return f".{target[:40]}.{os.urandom(6).hex()}.tmp"


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o600, exclusive: bool = False) -> None:
    """Replace ``path`` with ``data``: exclusive temporary file, fsync, rename, fsync of the directory.

    Args:
        path: the file to write; its directory must exist and pass the checks of the module docstring.
        data: the whole new content.
        mode: the file's permission bits (not reduced by the umask).
        exclusive: never replace an existing ``path`` (a key): the new file is linked in, which fails
            when anything, a link included, is already there.

    Raises:
        FileExistsError: ``exclusive`` and ``path`` exists; nothing was changed.
        PermissionError: the directory is not safe to write into (the message says why).
        OSError: the directory cannot be written (read-only, full, missing); nothing was changed. Only
            the final fsync of the directory can fail after the file was put in place.
    """
    target = Path(path)
    with _open_dir(target.parent) as dfd:
        tmp = _temporary_name(target.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        with _removed_on_error(tmp, dfd):
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                os.link(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                os.unlink(tmp, dir_fd=dfd)
            else:
                os.replace(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)


def replace_symlink(link: str | Path, points_to: str | Path) -> None:
    """Point the symlink ``link`` at ``points_to`` in one rename (a reader never finds it missing).

    Raises:
        OSError: the directory is not safe or cannot be written; the old link stays.
    """
    target = Path(link)
    with _open_dir(target.parent) as dfd:
        tmp = _temporary_name(target.name)
        os.symlink(points_to, tmp, dir_fd=dfd)  # never follows or overwrites
        with _removed_on_error(tmp, dfd):
            os.replace(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)


def read_regular(path: str | Path, *, max_bytes: int, private: bool = False) -> bytes:
    """The content of a regular file of at most ``max_bytes``: never a device (``/dev/zero`` would fill
    memory), never a FIFO (opened without blocking, so one without a writer cannot hang us).

    Args:
        private: refuse, before reading a byte, a file that group or others may read (a key).

    Raises:
        PermissionError: ``private`` and the mode lets others read it (``strerror`` says the mode).
        OSError: missing, unreadable, not a regular file, or larger than ``max_bytes``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(errno.EACCES, f"readable by others (mode {stat.S_IMODE(st.st_mode):04o})", str(path))
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data


@contextlib.contextmanager
def _removed_on_error(tmp: str, dfd: int) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
