"""The interpreter exits cleanly while a daemon thread is inside a kernel.

The kernels run with the GIL released. Before Python 3.14 a thread that takes
the GIL back while the interpreter finalizes is ended with pthread_exit; if
the GIL were taken back in a destructor (py::gil_scoped_release) that unwind
would abort the whole process at exit ("terminate called without an active
exception", exit status -6) after the program had finished its work.
csrc/python/gil.h says why fusedopt takes it back in plain code instead.

Each case runs in a fresh interpreter, with a daemon thread that calls one
entry point over and over on arrays big enough that it is almost always
inside the kernel when the main thread returns.
"""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    sys.modules["tensorflow"] = None  # the kernels only: faster, and no TF threads
    sys.modules["keras"] = None
    import numpy as np
    from fusedopt import _C, kernels

    N = 1 << 22  # 4M floats: several milliseconds a call
    p, g, m, v = ([np.ones(N, np.float32)] for _ in range(4))
    ptr = lambda arrays: [a.ctypes.data for a in arrays]
    scalars = np.full(6, 1e-3, np.float32)  # pointer_adam's Keras form
    flag = np.zeros(1, np.uint8)
    calls = {
        "adam": lambda: kernels.adam(p, g, m, v, lr=1e-3, step=1, skip_nonfinite=True),
        "sgd": lambda: kernels.sgd(p, g, m, lr=1e-2, momentum=0.9, global_clip_norm=1.0),
        "global_norm": lambda: kernels.global_norm(g),
        "all_finite": lambda: kernels.all_finite(g),
        "pointer_adam": lambda: _C.pointer_adam(ptr(p), ptr(g), ptr(m), ptr(v), [N], "float32",
                                                scalars.ctypes.data, form="keras", decay=False),
        "pointer_all_finite": lambda: _C.pointer_all_finite(ptr(g), [N], ["float32"],
                                                            flag.ctypes.data),
    }
    call = calls[sys.argv[1]]
    running = threading.Event()

    def loop():
        while True:
            call()
            running.set()

    threading.Thread(target=loop, daemon=True).start()
    assert running.wait(60), "the first call did not return"
    time.sleep(0.05)
    print("ok")
""")


@pytest.mark.parametrize("entry", ["adam", "sgd", "global_norm", "all_finite", "pointer_adam",
                                   "pointer_all_finite"])
def test_exit_while_a_daemon_thread_is_in_a_kernel(entry):
    env = dict(os.environ, FUSEDOPT_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, entry], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        f"exit status {out.returncode}\n" + out.stdout[-2000:] + out.stderr[-3000:])
    assert "terminate called" not in out.stderr, out.stderr[-3000:]
