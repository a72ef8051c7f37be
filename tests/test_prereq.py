"""A suite whose prerequisite is missing skips with one line naming it, and the run
ends with a summary of what was missing; on CI (``CI=true``) the same run fails."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from .helpers import MS

ROOT = Path(__file__).parent.parent


async def run_browser_suite(**env: str) -> tuple[int, str]:
    """The browser suite with no Chromium where it looks (and the given environment)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_browser.py",
        cwd=ROOT,
        env={**os.environ, "REALTIME_TEST_CHROMIUM": "/nonexistent/chromium", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60000 * MS)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_missing_prerequisite_skips_with_one_line_then_fails_on_ci() -> None:
    code, out = await run_browser_suite(CI="")
    assert code == 0 and "3 skipped" in out, out
    summary = out.split("missing prerequisites", 1)[1]
    assert "not found" in summary, out  # what, and how to install it

    code, out = await run_browser_suite(CI="true")
    assert code == 1 and "3 failed" in out and "CI=true" in out, out
