"""``adapters/pdf.py`` with browsers that misbehave: a hung one is killed with everything it started, a
failing one is named with its last words. (A working Chromium prints in test_verifier_page.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.adapters.pdf import print_pdf
from tests.rig import wait_for


def fake_browser(tmp: Path, body: str) -> str:
    script = tmp / "chromium"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_hung_browser_is_killed_with_its_children(tmp_path: Path) -> None:
    browser = fake_browser(tmp_path, f"sleep 300 & echo $! > {tmp_path}/child.pid\nsleep 300")
    (tmp_path / "page.html").write_text("<p>x</p>")
    with pytest.raises(OSError, match="did not print within 1 s"):
        print_pdf(browser, tmp_path / "page.html", tmp_path / "page.pdf", timeout_s=1)
    child = int((tmp_path / "child.pid").read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"

    wait_for(gone, 10, "the browser's renderer to be killed too")
    assert not (tmp_path / "page.pdf").exists()


def test_a_failing_browser_is_named_with_its_last_line(tmp_path: Path) -> None:
    browser = fake_browser(tmp_path, "echo starting >&2; echo 'Missing X server or $DISPLAY' >&2; exit 1")
    (tmp_path / "page.html").write_text("<p>x</p>")
    with pytest.raises(OSError, match=r"wrote no PDF \(exit 1\): Missing X server or \$DISPLAY"):
        print_pdf(browser, tmp_path / "page.html", tmp_path / "page.pdf")
    assert not (tmp_path / "page.pdf").exists()
