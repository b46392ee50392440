"""fusedopt-bench --backend torch: the Keras-torch cases run and compare."""

import json

from fusedopt.bench import cli


def test_bench_backend_torch_runs_fused(tmp_path, capsys):
    status = cli.main(["--backend", "torch", "--shapes", "3x1K", "--optimizers", "adam",
                       "--impls", "torch-fusedopt,keras-torch,torch-fused-cpu",
                       "--repeats", "3", "--warmup", "1", "--max-case-seconds", "0.5",
                       "--out", str(tmp_path), "--name", "t", "--no-plot", "--markdown"])
    assert status == 0, capsys.readouterr().out[-3000:]
    document = json.loads((tmp_path / "t.json").read_text())
    records = {r["name"]: r for r in document["cases"]}
    ours = records["adam/float32/3x1K/torch-fusedopt"]
    assert ours["status"] == "ok" and ours["note"] == "fused 3/3", ours
    assert set(ours["speedup"]) == {"keras-torch", "torch-fused-cpu"}
