"""The files the gateway reads at start: the config and profile TOML, the DBC files (cantools, strict),
and the package data (the forecast prior). The only module that imports tomllib and cantools.

Everything is returned as plain data (mappings, cantools databases); the core's ``parse_config`` and
``parse_profile`` and ``Prior.from_json`` turn it into the gateway's types. Every failure is a
``ConfigError`` naming the file and the config key that pointed at it.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import cantools

from ..errors import ConfigError
from .fs import read_regular

__all__ = ["BUILTIN_PROFILES", "builtin_dbc_dir", "certificate_languages", "check_json_file", "load_dbc", "missing_dbc",
           "read_config", "read_package_json", "read_package_text", "read_profile"]

# Every profile file of the package; files with "_" in their name are shared parts they include
BUILTIN_PROFILES = tuple(sorted(p.name.removesuffix(".toml") for p in resources.files("gateway.profiles").iterdir()
                                if p.name.endswith(".toml") and "_" not in p.name))


_MAX_TOML_BYTES = 1 << 20  # a config or profile is a few kB


def _read_toml(path: Path, *, key: str) -> dict[str, Any]:
    try:
        return tomllib.loads(read_regular(path, max_bytes=_MAX_TOML_BYTES).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: {path}: {exc}") from exc


def read_config(path: str | Path) -> dict[str, Any]:
    """The config file as a mapping.

    Raises:
        ConfigError: unreadable, not UTF-8, or a TOML syntax error (naming the file).
    """
    p = Path(path)
    try:
        text = read_regular(p, max_bytes=_MAX_TOML_BYTES).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {exc}") from exc


def builtin_dbc_dir() -> Path:
    """Where the project's own DBC files live: ``gateway/dbc`` in a wheel, ``dbc/`` in a source tree."""
    package = Path(str(resources.files("gateway")))
    installed = package / "dbc"
    return installed if installed.is_dir() else package.parent / "dbc"


def read_profile(name_or_path: str) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """A built-in profile by name, or a profile TOML file by path, with its ``include`` files merged.

    Returns:
        The document, and the directories its DBC file names are looked up in (in order).

    Raises:
        ConfigError: unknown name, unreadable file, or a TOML error.
    """
    if name_or_path in BUILTIN_PROFILES:
        path = Path(str(resources.files("gateway.profiles"))) / f"{name_or_path}.toml"
    else:
        path = Path(name_or_path)
        if not path.suffix:
            raise ConfigError(f"vehicle.profile: unknown profile {name_or_path!r} "
                              f"(built-in: {', '.join(BUILTIN_PROFILES)}; or a path to a .toml file)")
    data = _read_toml(path, key="vehicle.profile")
    for name in data.get("include", []):  # shared poll lists, e.g. leaf_lbc_polls.toml
        included = _read_toml(path.parent / name, key="vehicle.profile")
        data["poll"] = [*included.get("poll", []), *data.get("poll", [])]
    return data, (path.parent, builtin_dbc_dir())


def missing_dbc(names: Any, dirs: tuple[Path, ...]) -> list[str]:
    """Of the plain file names in ``names``, those found in none of ``dirs`` (to report with the profile's
    other problems)."""
    if not isinstance(names, list):
        return []
    plain = [n for n in names if isinstance(n, str) and n and "/" not in n and not n.startswith(".")]
    return [n for n in plain if not any((d / n).is_file() for d in dirs)]


def load_dbc(profile: str, names: tuple[str, ...], dirs: tuple[Path, ...]) -> list[Any]:
    """Load the DBC files a profile names, each from the first directory that has it, with ``strict=True``.

    Raises:
        ConfigError: a file is in none of ``dirs``, or does not load strictly (naming it).
    """
    where = ", ".join(map(str, dirs))
    missing = missing_dbc(list(names), dirs)
    if missing:
        raise ConfigError([f"profile {profile}: dbc: {n!r} not found in {where}" for n in missing])
    databases = []
    for name in names:
        path = next(d / name for d in dirs if (d / name).is_file())
        try:
            databases.append(cantools.database.load_file(str(path), strict=True))
        except Exception as exc:  # cantools raises many types (ParseError, UnsupportedDatabaseFormatError)
            raise ConfigError(f"profile {profile}: DBC {path}: {exc}") from exc
    return databases


def check_json_file(path: str, *, key: str, must_have: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a JSON document the config points at (``key``), or None."""
    try:
        doc = json.loads(read_regular(path, max_bytes=1 << 20))
    except OSError as exc:
        return f"{key}: {path}: {exc.strerror}"
    except ValueError as exc:
        return f"{key}: {path}: not JSON ({exc})"
    missing = [k for k in must_have if not isinstance(doc, dict) or k not in doc]
    return f"{key}: {path}: lacks {', '.join(missing)}" if missing else None


def read_package_text(name: str, *, what: str) -> str:
    """A text file shipped in ``gateway/data`` (``what`` it is, for the message).

    Raises:
        ConfigError: missing or unreadable; the release is damaged.
    """
    try:
        return (resources.files("gateway.data") / name).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"gateway/data/{name}: unreadable {what} ({exc}); reinstall the release") from exc


def certificate_languages() -> list[str]:
    """The codes of the certificate's languages: one data file each in ``gateway/data/lang``."""
    folder = resources.files("gateway.data") / "lang"
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".json"))


def read_package_json(name: str, *, what: str) -> Any:
    """A JSON file shipped in ``gateway/data`` (``what`` it is, for the message).

    Raises:
        ConfigError: missing or not JSON; the release is damaged.
    """
    try:
        return json.loads(read_package_text(name, what=what))
    except ValueError as exc:
        raise ConfigError(f"gateway/data/{name}: unreadable {what} ({exc}); reinstall the release") from exc
