"""``adapters/fs.write_atomic``, the one way the gateway writes a file: whole content or none, the mode
asked for whatever the umask, never through a link someone planted, nothing left behind on failure;
and no other module writes files its own way."""

from __future__ import annotations

import ast
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.fs import replace_symlink, safe_dir, write_atomic

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_content_and_mode_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    write_atomic(tmp_path / "key.pem", b"secret", mode=0o600)
    write_atomic(tmp_path / "page.html", b"<p>", mode=0o644)
    assert (tmp_path / "key.pem").read_bytes() == b"secret"
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "page.html").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem", "page.html"]  # no temporary files left


def test_a_link_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    # GIVEN another user's link where the certificate goes, pointing at a file of ours
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "certificate.cose").symlink_to(victim)
    # WHEN the certificate is written THEN the link is gone and the victim is untouched
    write_atomic(out / "certificate.cose", b"envelope")
    assert victim.read_bytes() == b"root's file"
    assert not (out / "certificate.cose").is_symlink() and (out / "certificate.cose").read_bytes() == b"envelope"


def test_a_link_at_the_old_predictable_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".certificate.cose.tmp").symlink_to(victim)  # the name the writers before fs.py used
    write_atomic(out / "certificate.cose", b"envelope")
    assert victim.read_bytes() == b"root's file"
    assert (out / "certificate.cose").read_bytes() == b"envelope"


def test_a_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    # GIVEN /tmp/cert planted as a link to a directory of ours (inspect --out /tmp/cert, run as root)
    (tmp_path / "etc").mkdir()
    (tmp_path / "cert").symlink_to(tmp_path / "etc")
    with pytest.raises(PermissionError, match="is a symbolic link"):
        write_atomic(tmp_path / "cert" / "certificate.cose", b"envelope")
    with pytest.raises(PermissionError, match="is a symbolic link"):
        safe_dir(tmp_path / "cert")
    assert list((tmp_path / "etc").iterdir()) == []


def test_a_directory_others_can_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may swap files here
    with pytest.raises(PermissionError, match="can be written by other users"):
        write_atomic(shared / "x", b"")
    shared.chmod(0o1777)  # like /tmp: others may add files but not rename or remove ours
    write_atomic(shared / "x", b"ok")
    assert (shared / "x").read_bytes() == b"ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "cert"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)  # nobody's: they could plant or swap anything in it
    with pytest.raises(PermissionError, match="owned by another user"):
        write_atomic(theirs / "certificate.cose", b"envelope")
    with pytest.raises(PermissionError, match="owned by another user"):
        safe_dir(theirs)


def test_a_new_directory_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    made = safe_dir(tmp_path / "a" / "state")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()  # the rename cannot replace a directory
    with pytest.raises(OSError):
        write_atomic(tmp_path / "state.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "x", b"")


def test_an_exclusive_write_never_replaces_anything(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(b"the device identity")
    (tmp_path / "link.pem").symlink_to(tmp_path / "nowhere")
    for name in ("key.pem", "link.pem"):
        with pytest.raises(FileExistsError):
            write_atomic(tmp_path / name, b"another key", exclusive=True)
    assert (tmp_path / "key.pem").read_bytes() == b"the device identity"
    assert (tmp_path / "link.pem").is_symlink() and not (tmp_path / "nowhere").exists()
    write_atomic(tmp_path / "new.pem", b"k", exclusive=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem", "link.pem", "new.pem"]


def test_the_release_link_is_switched_in_one_rename(tmp_path: Path) -> None:
    (tmp_path / "releases" / "1.0").mkdir(parents=True)
    (tmp_path / "releases" / "2.0").mkdir()
    replace_symlink(tmp_path / "current", Path("releases") / "1.0")
    replace_symlink(tmp_path / "current", Path("releases") / "2.0")
    assert os.readlink(tmp_path / "current") == "releases/2.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "releases"]


# What opens a file for writing other than fs.py, and why: each is a stream or a lock, not a file replaced.
_OWN_WAY = {
    ("adapters/tuf_client.py", "open"): "the resumable download, appended to across runs (O_NOFOLLOW)",
    ("adapters/sqlite_outbox.py", "open"): "the state directory's lock file, never written",
    ("adapters/sqlite_outbox.py", "replace"): "a corrupt database moved aside, kept for a post-mortem",
    ("adapters/releases.py", "open"): "the updater's lock file, and a bundle built in memory",
    ("sim/demo.py", "open"): "the demo daemon's log in its private temporary directory",
    ("app/cli.py", "open"): "--out naming an existing pipe or device (/dev/stdout), written into",
    ("adapters/capture_files/__init__.py", "open"): "a capture opened read-only and non-blocking (a FIFO)",
    ("adapters/capture_files/_python_can_formats.py", "open"):
        "/dev/null for the forked MF4 reader's output, and its frames in its private temporary directory",
    ("adapters/capture_files/_python_can_formats.py", "write_text"):
        "the forked MF4 reader's error, in its private temporary directory",
}


def _writes(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
        if name in ("write_text", "write_bytes", "symlink_to", "mkstemp") or (
                owner == "os" and name in ("replace", "rename", "symlink", "open")):
            yield name
        elif name == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                  None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
                yield name


def test_no_module_writes_a_file_its_own_way() -> None:
    found = set()
    for path in GATEWAY.rglob("*.py"):
        rel = path.relative_to(GATEWAY).as_posix()
        if rel != "adapters/fs.py":
            found |= {(rel, call) for call in _writes(ast.parse(path.read_text()))}
    assert found == set(_OWN_WAY)
