"""The tests of tests/backends/jax/, in a child pytest with KERAS_BACKEND=jax
(tests/backend_tests.py)."""

from backend_tests import run_backend_tests


def test_jax_backend():
    run_backend_tests("jax")
