"""fusedopt.kernels works where TensorFlow is not installed (e.g. a GPU box
used only through CuPy/PyTorch/JAX arrays); the optimizers say what they need."""

import subprocess
import sys
import textwrap


def test_kernels_import_and_run_without_tensorflow():
    script = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None  # makes `import tensorflow` fail
        sys.modules["keras"] = None
        import numpy as np
        import fusedopt
        p, g = [np.ones(5, np.float32)], [np.full(5, 0.5, np.float32)]
        m, v = [np.zeros(5, np.float32)], [np.zeros(5, np.float32)]
        fusedopt.kernels.adam(p, g, m, v, lr=0.1, step=1)
        assert np.all(p[0] < 1), p
        assert fusedopt.build_info()["cpu_isa"]
        try:
            fusedopt.Adam
        except ImportError as e:
            for needed in ("needs Keras", "fusedopt[tensorflow]", "fusedopt[jax]",
                           "fusedopt[torch]"):
                assert needed in str(e), e
        else:
            raise AssertionError("fusedopt.Adam without TensorFlow")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # (An editable install's rebuild may print before it.)
    assert out.stdout.strip().splitlines()[-1] == "ok"
