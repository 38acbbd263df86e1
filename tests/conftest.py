"""Shared by every test suite: puts ``tests/`` on ``sys.path`` so that the test doubles
(``tests/doubles.py``: ``from doubles import FakeShaper, Netns``) import from anywhere under it.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
