"""Runs a script once per CPU instruction set (and with one thread) to check
that every variant computes the same bits.

The script must print, as its last line, JSON with "isa" and "threads" (from
fusedopt.build_info(), so the test sees that FUSEDOPT_ISA and
FUSEDOPT_NUM_THREADS took effect) and "sha256" (a digest of its results).
"""

import json
import os
import subprocess
import sys

import fusedopt


def variants():
    """(isa, threads): every supported ISA with 2 threads, the best with 1."""
    isas = fusedopt.build_info()["cpu_isa_supported"]
    return [(isa, 2) for isa in isas] + [(isas[-1], 1)]


def digests(script):
    """{(isa, threads): sha256} of `script` run under every variant, in parallel."""
    procs = []
    for isa, threads in variants():
        env = dict(os.environ, FUSEDOPT_ISA=isa, FUSEDOPT_NUM_THREADS=str(threads),
                   TF_CPP_MIN_LOG_LEVEL="3")
        procs.append(((isa, threads), subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd="/")))
    results = {}
    for (isa, threads), proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{isa}/{threads} threads failed:\n{err[-3000:]}"
        got = json.loads(out.strip().splitlines()[-1])
        # The environment variables took effect.
        assert (got["isa"], got["threads"]) == (isa, threads)
        results[(isa, threads)] = got["sha256"]
    return results
