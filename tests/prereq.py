"""What some suites need beyond Python: redis-server, the PostgreSQL server binaries,
Node.js with ``tests/js/node_modules``, Chromium, the docker CLI.

A test whose prerequisite is missing is skipped with one line naming it and how to
install it, and the end of the run lists each missing prerequisite once. On CI
(``CI=true``) a missing prerequisite fails the test instead: there, every suite must run.
"""

from __future__ import annotations

import os
import shutil
from typing import Final, NoReturn

import pytest

__all__ = [
    "MISSING",
    "NODE_INSTALL",
    "NPM_CI",
    "ON_CI",
    "missing",
    "need_program",
    "optional",
]

NODE_INSTALL: Final = "install Node.js 20+ (nodejs.org, or your package manager)"
NPM_CI: Final = "run `npm ci --prefix tests/js` (make test does)"

ON_CI: Final = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")

MISSING: dict[str, None] = {}
"""Each missing prerequisite's line, once, in order (for the end-of-run summary)."""


def missing(line: str) -> NoReturn:
    """Skip the running test (fail it on CI): ``line`` names what is missing and how to
    install it."""
    if ON_CI:
        pytest.fail(f"{line} (CI=true: every suite must run)", pytrace=False)
    MISSING[line] = None
    pytest.skip(line)


def optional(line: str) -> NoReturn:
    """Skip the running test, also on CI: for tools the project does not require (the
    docker CLI's compose, haproxy), checked when they happen to be there."""
    MISSING[line] = None
    pytest.skip(line)


def need_program(name: str, install: str, path: str | None = None) -> str:
    """The path of program ``name`` (or of ``path`` when given), else skip/fail with
    ``install`` as the hint."""
    found = shutil.which(path or name)
    if not found:
        missing(f"{name} not found: {install}")
    return found
