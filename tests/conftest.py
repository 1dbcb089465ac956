"""Shared fixtures: where the real data lives, and temporary results folders."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real-data folder ($DRAINAGE_BENCH_DATA).

    Skips when the variable is unset (a user's clone); under CI=true a missing folder fails.
    """
    value = os.environ.get("DRAINAGE_BENCH_DATA")
    if not value or not Path(value).is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"DRAINAGE_BENCH_DATA={value!r} is not a folder; CI needs the real data")
        pytest.skip("DRAINAGE_BENCH_DATA is not set")
    return Path(value).resolve()  # absolute: tests link to these files from temporary folders


def require_file(path: Path) -> Path:
    """Skip (or, under CI=true, fail) when a real data file is missing."""
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing real data file {path}")
        pytest.skip(f"missing {path}")
    return path


def tree(root: Path) -> dict:
    """Every path under `root` with its bytes (folders: None): a snapshot to compare."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def assert_user_error(out, needle: str, results: Path, before: dict | None = None) -> None:
    """A CLI run stopped by bad input: exit 2, one line naming `needle`, no traceback, nothing
    written under `results`: it does not exist, or (given `before`, its `tree` before the run)
    it is as it was."""
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert (tree(results) == before) if before is not None else not results.exists()
