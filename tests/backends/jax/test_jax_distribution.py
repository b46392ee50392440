"""fusedopt under keras.distribution on two host devices (JAX).

Every case runs in one child process (distributed_child.py) started with
XLA_FLAGS=--xla_force_host_platform_device_count=2 before jax is imported
there (this process, and the other JAX tests, keep one device). Each case
trains a fusedopt model and a stock one under the same distribution with
real `model.fit`, step by step from the same state (parity.per_step_ulps),
and compiles both train steps as Keras does (state donated, out_shardings
the state's shardings) to count the fused custom calls and the collectives.

Under DataParallel the fused call runs on every device's replica; under
ModelParallel on every device's shard of the sharded kernels (jax.shard_map,
docs/backends.md). Neither adds an all-gather to what stock compiles.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras

from fusedopt.core import plan as plan_mod

from parity import NORM_CLIP

assert keras.backend.backend() == "jax", keras.backend.backend()

# As test_jax_optimizers.JAX_STEP_ULPS: jitted fused vs jitted stock, step
# ulps per step (XLA contracts the stock update's multiply-adds).
JAX_STEP_ULPS = 16

CHILD = Path(__file__).resolve().parent / "distributed_child.py"
CASES = ["dp-adam", "dp-sgd", "dp-clipnorm", "mp-adam", "mp-sgd-nesterov-clipvalue",
         "mp-adamw-clipnorm", "mp-global_clipnorm", "mp-skip_nonfinite", "reasons"]
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_force_host_platform_device_count=2").strip())
    run = subprocess.run([sys.executable, str(CHILD), *CASES], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"{run.stdout[-5000:]}\n{run.stderr[-10000:]}"
    out = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            out[result["case"]] = result
    assert sorted(out) == sorted(CASES), run.stdout[-5000:]
    return out


def assert_fused(result, target, calls=1):
    paths = result["paths"]
    assert len(paths) == 6 and set(paths.values()) == {plan_mod.FUSED}, paths
    fused, stock = result["fused"], result["stock"]
    assert fused[target] == calls, fused
    assert stock[target] == 0, stock
    # No gather of the parameters (or of anything else) that stock does not
    # have; the variables keep their layouts.
    assert fused["all-gather"] <= stock["all-gather"], (fused, stock)
    assert fused["all-to-all"] <= stock["all-to-all"], (fused, stock)
    assert result["layouts_kept"]


@pytest.mark.parametrize("case, target", [("dp-adam", "fusedopt_adam"),
                                          ("dp-sgd", "fusedopt_sgd")])
def test_data_parallel_fit_runs_fused_on_every_replica(results, case, target):
    result = results[case]
    assert result["ulps"] <= JAX_STEP_ULPS, result
    assert_fused(result, target)
    # Replicated variables: the fused step adds no collective at all (the
    # gradients' all-reduce is Keras' / XLA's, as for stock).
    for op in COLLECTIVES:
        assert result["fused"][op] == result["stock"][op], (op, result)
    # Every parameter and slot goes into the call as the step's donated
    # buffer, in place (measured: all of them).
    done, written = result["fused"]["in_place"]
    assert done == written, result["fused"]


@pytest.mark.parametrize("case, target", [("mp-adam", "fusedopt_adam"),
                                          ("mp-sgd-nesterov-clipvalue", "fusedopt_sgd")])
def test_model_parallel_fit_updates_shard_by_shard(results, case, target):
    result = results[case]
    assert result["ulps"] <= JAX_STEP_ULPS, result
    assert_fused(result, target)
    for op in COLLECTIVES:
        assert result["fused"][op] <= result["stock"][op], (op, result)
    # Every shard of a parameter or slot is the step's donated buffer but
    # one: the last layer's bias, which the loss reads next to the call
    # (copied on one device too, test_jax_compiled.py).
    done, written = result["fused"]["in_place"]
    assert done >= written - 1, result["fused"]


@pytest.mark.parametrize("case, target", [("dp-clipnorm", "fusedopt_adam"),
                                          ("mp-adamw-clipnorm", "fusedopt_adam"),
                                          ("mp-global_clipnorm", "fusedopt_sgd")])
def test_folded_norm_clip_sums_the_shards(results, case, target):
    """clipnorm / global_clipnorm fold into the call: each device's squared
    norms of its shards, psum over the axes that shard them."""
    result = results[case]
    assert result["ulps"] <= NORM_CLIP, result
    assert_fused(result, target)
    assert result["fused"]["fusedopt_squared_norms"] == 1, result
    assert result["fused"]["fusedopt_clip_factors"] == 1, result
    if case.startswith("mp-"):
        # The psum of the sharded kernels' squared norms.
        assert result["fused"]["all-reduce"] >= 1, result


def test_skip_nonfinite_skips_on_every_shard(results):
    """A batch with an Inf: the fused step leaves every variable (and
    iterations) unchanged; the finite steps as stock."""
    result = results["mp-skip_nonfinite"]
    assert result["ulps"]["skipped_changed"] == 0, result
    assert result["ulps"]["ulps"] <= JAX_STEP_ULPS, result
    assert_fused(result, "fusedopt_adam")
    assert result["fused"]["fusedopt_all_finite"] == 1, result


def test_fallback_reasons(results):
    """What cannot be updated on its shards, and why: an uneven shard
    (shard_map takes equal shards; Keras' jax.device_put refuses those
    layouts too), a variable without a layout of the distribution (Keras'
    jit refuses it too), and a distribution other than DataParallel /
    ModelParallel (the whole step, stock)."""
    reasons = results["reasons"]["reasons"]
    assert reasons["even"] is None, reasons
    assert reasons["uneven"] == ("sharded unevenly: dimension 0 of size 7 over mesh axes "
                                 "('model',) (2 shards; the fused update takes equal "
                                 "shards)"), reasons
    assert "has no layout of the keras.distribution" in reasons["unplaced"], reasons
    assert reasons["other"] == ("under keras.distribution OtherDistribution (fused under "
                                "DataParallel and ModelParallel only)"), reasons
