"""Every configuration example in docs/transport.md is a valid configuration (its [can] section)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gateway.core.config import parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "transport.md"


def test_every_documented_can_section_is_valid() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    interfaces = []
    for block in blocks:
        config = parse_config(tomllib.loads(block), sections=("can",))
        interfaces.append(config.can.interface)
    assert interfaces == ["elm327", "slcan", "gs_usb", "pcan", "kvaser"]
