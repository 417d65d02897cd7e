"""``certificate.pdf``: the certificate page printed to A4 by a headless Chromium (Debian's
``chromium-headless-shell`` on the Pi image, or ``chromium``), so the paper is the page a buyer sees on
screen, Japanese included, with a QR that scans (docs/qr.md).

The page is our own, has no scripts and loads nothing (its Content-Security-Policy allows neither);
Chromium runs with a throw-away profile, no network services, and (as root only, where Chromium
insists) without its sandbox, in its own session so a timeout kills all of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .fs import write_atomic

__all__ = ["BROWSERS", "find_browser", "print_pdf"]

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
_FLAGS = ("--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-quic", "--no-pdf-header-footer",
          "--run-all-compositor-stages-before-draw")


def find_browser() -> str | None:
    """The first headless-capable Chromium on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def print_pdf(browser: str, html_file: Path, pdf_file: Path, *, timeout_s: float = 20.0) -> None:
    """Print ``html_file`` to ``pdf_file`` (mode 0600, written atomically).

    Raises:
        OSError: the browser failed, timed out, or wrote no PDF (its last stderr line in the message).
    """
    with tempfile.TemporaryDirectory(prefix="bgw-pdf-") as tmp:
        target = Path(tmp) / "out.pdf"
        flags = [*_FLAGS, f"--user-data-dir={tmp}/profile", f"--print-to-pdf={target}"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")
        # its own session: on a timeout the whole browser (zygote, renderers) goes, not only its first process
        proc = subprocess.Popen([browser, *flags, html_file.resolve().as_uri()], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise OSError(f"{browser} did not print within {timeout_s:g} s") from None
        data = target.read_bytes() if target.is_file() else b""
        if not data.startswith(b"%PDF-"):
            tail = (err.strip().splitlines() or ["no output"])[-1]
            raise OSError(f"{browser} wrote no PDF (exit {proc.returncode}): {tail}")
    write_atomic(pdf_file, data, mode=0o600)
