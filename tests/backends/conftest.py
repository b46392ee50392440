"""tests/backends/<backend>/: tests that need KERAS_BACKEND=<backend>, run by
tests/test_backends.py in a child process (never in the TensorFlow run)."""

import os
from pathlib import Path


def pytest_ignore_collect(collection_path, config):
    wanted = os.environ.get("FUSEDOPT_BACKEND_TESTS")
    here = Path(__file__).resolve().parent
    path = Path(collection_path).resolve()
    if path == here or here not in path.parents:
        return None
    backend = path.relative_to(here).parts[0]
    return None if backend == wanted else True
