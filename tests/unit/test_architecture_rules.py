"""The dependency rules of docs/architecture.md hold (import-linter contracts in pyproject.toml), and each
contract can fail: a copy of the package with one planted violation breaks exactly the contract that
forbids it. The plants are new modules, so this also shows that a module added tomorrow is checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
CONTRACT_IDS = [c["id"] for c in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
                ["contracts"]]

# contract id -> (new module under gateway/, its source): the smallest thing the contract must refuse
PLANTS: dict[str, tuple[str, str]] = {
    "layers": ("core/planted.py", "from gateway.services import pipeline\n"),
    "adapters-see-ports-model-errors": ("adapters/planted.py", "from gateway.core import decoding\n"),
    "adapters-independent": ("adapters/planted.py", "from gateway.adapters import mqtt\n"),
    "services-independent": ("services/planted.py", "from gateway.services import pipeline\n"),
    "core-no-io": ("core/planted.py", "import pathlib\n"),
    "io-libraries-in-adapters": ("app/planted.py", "import sqlite3\n"),
    "product-without-sim": ("app/planted.py", "from gateway.sim import ecu\n"),
}


def _lint(root: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"]
    if contract:
        args += ["--contract", contract]
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy, not the installed checkout
    return subprocess.run(args, capture_output=True, text=True, cwd=root, env=env, timeout=120)


def _copy(tmp_path: Path, plant: tuple[str, str] | None = None) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(REPO / "gateway", root / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    if plant is not None:
        (root / "gateway" / plant[0]).write_text(plant[1])
    return root


def test_import_contracts_are_kept() -> None:
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"{len(CONTRACT_IDS)} kept, 0 broken" in out.stdout


def test_every_contract_has_a_planted_violation() -> None:
    assert sorted(PLANTS) == sorted(CONTRACT_IDS)


def test_an_untouched_copy_keeps_every_contract(tmp_path: Path) -> None:
    out = _lint(_copy(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:]


@pytest.mark.parametrize("contract", sorted(PLANTS))
def test_a_planted_violation_breaks_its_contract(tmp_path: Path, contract: str) -> None:
    # GIVEN a copy of the package with one new module that breaks the rule
    root = _copy(tmp_path, PLANTS[contract])
    # WHEN only that contract is checked THEN it is broken, and it names the planted module
    out = _lint(root, contract)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "BROKEN" in out.stdout and "planted" in out.stdout, out.stdout[-3000:]


def test_an_indirect_import_is_no_loophole(tmp_path: Path) -> None:
    # GIVEN a core module that reaches the file system only through an adapter
    root = _copy(tmp_path, ("core/planted.py", "from gateway.adapters import fs\n"))
    # THEN "the core does no I/O" sees the chain core.planted -> adapters.fs -> os
    out = _lint(root, "core-no-io")
    assert out.returncode == 1 and "gateway.adapters.fs -> os" in out.stdout, out.stdout[-3000:]


def test_every_package_directory_is_installed() -> None:
    # A sub-package missing from [tool.setuptools] packages works from the checkout and is absent from the wheel.
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "gateway").rglob("__init__.py")}
    assert on_disk - listed == set()
