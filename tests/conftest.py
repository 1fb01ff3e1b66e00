"""Shared fixtures: the I/O engines (tests/engines.py) and the golden v1 data."""

import os

import pytest

from engines import ENGINES, engine  # noqa: F401  (shared with benchmarks/)

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_V1 = os.path.join(HERE, "data", "v1")  # written by the original FFRecord 1.4.0


@pytest.fixture
def golden_v1():
    if not os.path.isdir(GOLDEN_V1):
        pytest.fail(f"golden v1 files missing at {GOLDEN_V1}")
    return GOLDEN_V1
