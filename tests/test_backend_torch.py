"""The tests of tests/backends/torch/, in a child pytest with KERAS_BACKEND=torch
(tests/backend_tests.py)."""

from backend_tests import run_backend_tests


def test_torch_backend():
    run_backend_tests("torch")
