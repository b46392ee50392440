"""fusedopt.kernels in a process forked after the parent used the kernel
thread pool (multiprocessing's "fork" start method, the Linux default before
Python 3.14).

A forked child has only the thread that forked: the pool's worker threads
are gone, and the pool's locks are in whatever state the parent's threads
left them. The pool must be re-created in the child. Each scenario runs in a
fresh interpreter with a 2-thread pool (FUSEDOPT_NUM_THREADS=2, whatever this
machine has) and calls big enough to wake it; a child that does not finish in
time is killed and fails the test instead of hanging the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork start method")

_SCRIPT = textwrap.dedent("""
    import hashlib, multiprocessing, sys, threading
    sys.modules["tensorflow"] = None  # the kernels only: faster, and no TF threads
    sys.modules["keras"] = None
    import numpy as np
    import fusedopt
    from fusedopt import kernels

    N = 1 << 20  # 28 MiB of Adam traffic: several threads' worth (cpu/parallel.h)

    def work(seed):
        '''Every kernel once on fresh arrays; a digest of all results.'''
        rng = np.random.default_rng(seed)
        p, g, m, v = ([rng.standard_normal(N).astype(np.float32)] for _ in range(4))
        v = [np.abs(v[0])]
        kernels.adam(p, g, m, v, lr=1e-3, step=1, global_clip_norm=1.0,
                     skip_nonfinite=True)
        kernels.sgd(p, g, m, lr=1e-2, momentum=0.9)
        digest = hashlib.sha256()
        for x in (p[0], m[0], v[0]):
            digest.update(x.tobytes())
        digest.update(repr(kernels.global_norm(g)).encode())
        digest.update(repr(kernels.all_finite(g)).encode())
        return digest.hexdigest()

    def child(queue):
        queue.put(work(1))

    if __name__ == "__main__":
        assert fusedopt.build_info()["num_threads"] == 2
        expected = work(1)  # the parent's pool has run
        stop = threading.Event()
        if sys.argv[1] == "busy":
            # Another thread keeps the pool busy while the main thread forks:
            # the child inherits its locks held by a thread it does not have.
            def keep_busy():
                while not stop.is_set():
                    work(2)
            threading.Thread(target=keep_busy, daemon=True).start()
        ctx = multiprocessing.get_context("fork")
        for _ in range(2):
            queue = ctx.Queue()
            proc = ctx.Process(target=child, args=(queue,))
            proc.start()
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                print("child hung")
                sys.exit(3)
            assert proc.exitcode == 0, proc.exitcode
            assert queue.get(timeout=10) == expected
        stop.set()
        print("ok")
""")


@pytest.mark.parametrize("parent", ["idle", "busy"])
def test_kernels_run_in_a_forked_child(parent):
    env = dict(os.environ, FUSEDOPT_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, parent], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        out.stdout[-2000:] + out.stderr[-3000:])
