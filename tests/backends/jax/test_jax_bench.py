"""fusedopt-bench --backend jax: the three JAX cases run and time a step, and
the fused one says it ran fused."""

import json

import keras

from fusedopt.bench import cli

assert keras.backend.backend() == "jax", keras.backend.backend()


def test_bench_backend_jax_runs_fused_keras_and_optax(tmp_path, capsys):
    status = cli.main(["--backend", "jax", "--optimizers", "adam", "--dtypes", "float32",
                       "--shapes", "3x1K", "--steps-per-call", "2", "--repeats", "3",
                       "--warmup", "1", "--max-case-seconds", "5", "--warm-cache",
                       "--out", str(tmp_path),
                       "--name", "jax", "--no-plot", "--markdown"])
    assert status == 0
    document = json.loads((tmp_path / "jax.json").read_text())
    records = {r["name"]: r for r in document["cases"]}
    impls = {name.rsplit("/", 1)[1] for name in records}
    assert {"fusedopt-jax", "keras-jax"} <= impls
    for name, record in records.items():
        if name.endswith("/optax") and record["status"] == "skipped":
            continue  # optax is optional
        assert record["status"] == "ok", record
    assert records["adam/float32/3x1K/fusedopt-jax"]["note"] == "fused 3/3"
