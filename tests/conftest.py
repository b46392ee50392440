import os
from pathlib import Path

# Quieter TF logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# tests/backends/<backend>/ holds tests that need KERAS_BACKEND=<backend>;
# tests/test_backend_<backend>.py runs each folder in a child pytest with that
# backend (and FUSEDOPT_BACKEND_TESTS=<backend>), never in this TensorFlow run.
# (The hook lives here, not in a conftest.py of tests/backends/: that would
# put tests/backends/ on sys.path, where its jax/ and torch/ folders would
# shadow the real packages.)
_BACKENDS = Path(__file__).resolve().parent / "backends"


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path).resolve()
    if _BACKENDS not in path.parents:
        return None
    backend = path.relative_to(_BACKENDS).parts[0]
    return None if backend == os.environ.get("FUSEDOPT_BACKEND_TESTS") else True
