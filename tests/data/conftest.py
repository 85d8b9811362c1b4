"""Fixtures for the data-layer tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def write(tmp_path):
    """write(name, bytes_or_str) -> path of a file holding exactly that content."""

    def _write(name: str, content: bytes | str) -> str:
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    return _write
