"""Runs the tests of the other Keras backends, each in its own process
(tests/test_backend_jax.py, tests/test_backend_torch.py: one file per
backend, so that pytest-xdist's --dist loadfile gives each its own worker).

Keras picks its backend once per process (KERAS_BACKEND, before the first
``import keras``), and this pytest process runs on TensorFlow. The tests of
``tests/backends/<backend>/`` therefore run in a child pytest with
``KERAS_BACKEND=<backend>``; this test fails with the child's output when any
of them fails. Where the backend's framework is not installed the child is
not started: skipped here, and a failure under CI (``CI`` set), whose
``pip install ".[test]"`` installs every framework.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FRAMEWORKS = {"jax": "jax", "torch": "torch"}  # backend -> the module it needs


def run_backend_tests(backend):
    """Runs tests/backends/<backend>/ in a child pytest; fails with its output."""
    folder = HERE / "backends" / backend
    if not any(folder.glob("test_*.py")):
        pytest.skip(f"no tests in {folder}")
    if importlib.util.find_spec(FRAMEWORKS[backend]) is None:
        message = f"{FRAMEWORKS[backend]} is not installed (pip install '.[{backend}]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = dict(os.environ, KERAS_BACKEND=backend, FUSEDOPT_BACKEND_TESTS=backend)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        env=env, cwd=HERE.parent, capture_output=True, text=True)
    # pytest's 5: nothing collected, a misplaced file rather than a pass.
    assert run.returncode == 0, (
        f"KERAS_BACKEND={backend} tests failed (exit {run.returncode}):\n"
        f"{run.stdout[-20000:]}\n{run.stderr[-5000:]}")
