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


def _tiny_mlp(keras):
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="relu"),
                             keras.layers.Dense(3)])


def test_fit_quick_backend_torch_trains_fused_against_keras_torch(tmp_path, capsys,
                                                                   monkeypatch):
    # --fit --quick --backend torch with the quick grid's models swapped for a
    # 5-7-3 MLP (batch 4): its three groups run, eager and under torch.compile,
    # in the JSON shape of the TensorFlow runs. SGD's row is judged bit for bit
    # (Keras-torch's foreach SGD), Adam's and the compiled rows are reported.
    from fusedopt.bench import fit

    monkeypatch.setitem(fit.MODELS, "tiny", fit.FitModel(
        "tiny", "MLP 5-7-3", _tiny_mlp, (5,), classes=3, batch_size=4))
    monkeypatch.setattr(fit, "QUICK", fit.FitPreset(
        groups=(fit.FitGroup("tiny", False, 1, ("adam", "sgd")),
                fit.FitGroup("tiny", True, 1, ("adam",)),
                fit.FitGroup("tiny", False, 4, ("adam",))),
        settings=fit.FitSettings(rounds=2, warmup=1, calls_per_round=3, max_seconds=60)))
    # Count the fused kernel's calls: fused_paths says what the plan chose,
    # this that the kernel ran, eager and inside the torch.compile'd step.
    from fusedopt.backends.torch import ops

    calls = {"adam": 0}

    class CountingC:
        def __getattr__(self, name):
            return getattr(real_c, name)

        def pointer_adam(self, *args, **kwargs):
            calls["adam"] += 1
            return real_c.pointer_adam(*args, **kwargs)

    real_c = ops._C
    monkeypatch.setattr(ops, "_C", CountingC())
    status = cli.main(["--fit", "--quick", "--backend", "torch", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    # Two fused Adam models (eager, compiled), each (1 warm-up + 2) rounds of
    # 3 steps: one kernel call per step; the stock models never call it.
    assert calls["adam"] == 2 * 3 * 3
    [written] = list(tmp_path.glob("fit-torch-cpu-*.json"))
    document = json.loads(written.read_text())
    assert document["schema"] == fit.SCHEMA and document["keras_backend"] == "torch"
    rows = {r["name"]: r for r in document["rows"]}
    assert list(rows) == ["tiny/eager/adam", "tiny/eager/sgd", "tiny/compile/adam"]
    # Keras-torch's fit takes steps_per_execution=1 only: that group is named, not run.
    assert document["notes"] == ["not run on torch: tiny/eager/spe4 (steps_per_execution > 1: "
                                 "Keras-torch's fit refuses it)"]
    for name, r in rows.items():
        assert r["status"] == "ok", r.get("error")
        assert r["backend"] == "torch"
        # The fused path ran for every variable (fused_paths of the trained optimizer).
        assert r["fused_variables"] == r["fused_paths_total"] == 4 and r["not_fused"] == {}
        assert r["rounds"] == 2 and r["steps_timed_per_round"] == 2
        for impl in ("stock", "fusedopt", "no_update"):
            assert len(r[f"{impl}_times_s"]) == 2 and r[f"{impl}_median_s"] > 0
        assert r["ratio_median"] > 0 and r["rss_bytes"] > 0
        assert r["weights_elements"] == 5 * 7 + 7 + 7 * 3 + 3
        assert r["weights_max_ulp"] is not None
    eager_adam, sgd, compiled = (rows["tiny/eager/adam"], rows["tiny/eager/sgd"],
                                 rows["tiny/compile/adam"])
    assert sgd["parity_max_ulp"] == 0 and sgd["weights_match"] is True
    assert sgd["weights_max_ulp"] == 0
    assert eager_adam["parity_max_ulp"] is None and "2 step ulps" in eager_adam["parity"]
    assert compiled["jit_compile"] and compiled["mode"] == "compile"
    assert compiled["weights_match"] is None and "torch.compile" in compiled["parity"]
    assert "speedup" in out and "opt. share keras" in out
    assert cli.main(["--show", str(written), "--markdown"]) == 0
    assert "| tiny | compile | adam |" in capsys.readouterr().out


def test_fit_backend_torch_refuses_steps_per_execution(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--fit", "--quick", "--backend", "torch", "--steps-per-call", "4"])
    assert exit_info.value.code == 2
    assert ("argument --steps-per-call: at most 1 with --fit on the torch backend "
            "(Keras-torch's fit runs one step per train-function call)") in capsys.readouterr().err
