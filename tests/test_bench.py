"""The benchmark CLI (fusedopt-bench): it runs, skips what is missing, and writes
the documented JSON, CSV and PNG. No timing is asserted here: timings belong
to the benchmark's output, not to tests.
"""

import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fusedopt import _ops
from fusedopt.bench import cases, cli, fit, report, targets, timing
from fusedopt.bench.cases import Implementation, Runner, Skip

TOP_LEVEL_FIELDS = {"schema", "created", "command", "settings", "machine", "versions",
                    "build_info", "floor", "notes", "cases", "targets", "wall_s"}
MACHINE_FIELDS = {"cpu_model", "cpu_count", "memory_bytes", "llc_bytes", "loadavg",
                  "loadavg_end"}
CASE_FIELDS = {"name", "optimizer", "dtype", "shape", "n_tensors", "tensor_size", "params",
               "impl", "device", "ours", "status", "note", "times_s", "median_s", "min_s",
               "max_s", "params_per_s", "gbps", "bytes_per_param", "bytes_moved", "floor_s",
               "pct_floor", "speedup", "copies", "cache", "first_call_s", "loadavg"}


def run_cli(*args, timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "fusedopt.bench", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_quick_tiny_grid_writes_documented_outputs(tmp_path, capsys):
    # fusedopt, stock Keras, the per-variable TF op, the raw kernel, and a GPU
    # baseline that is skipped (not an error) on a machine without one.
    proc = run_cli("--quick", "--shapes", "3x1K,2x300", "--impls",
                   "fusedopt,keras,tf-raw,kernels,torch-fused", "--repeats", "3",
                   "--out", str(tmp_path), "--name", "tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "% floor" in proc.stdout

    doc = json.loads((tmp_path / "tiny.json").read_text())
    assert TOP_LEVEL_FIELDS <= set(doc)
    assert doc["schema"] == report.SCHEMA
    assert MACHINE_FIELDS <= set(doc["machine"])
    assert {"python", "numpy", "tensorflow", "keras", "fusedopt"} <= set(doc["versions"])
    assert "cuda" in doc["build_info"] and "cpu_isa" in doc["build_info"]
    cpu_floor = doc["floor"]["cpu"]
    assert cpu_floor["gbps"] > 0 and len(cpu_floor["times_s"]) > 0

    by_name = {c["name"]: c for c in doc["cases"]}
    assert len(by_name) == 2 * 5
    for case in doc["cases"]:
        assert CASE_FIELDS <= set(case), case["name"]
        assert case["status"] in ("ok", "skipped"), (case["name"], case["note"])
        assert case["bytes_per_param"] == 28
    for shape in ("3x1K", "2x300"):
        fused = by_name[f"adam/float32/{shape}/fusedopt"]
        assert fused["status"] == "ok"
        assert len(fused["times_s"]) == 3
        assert fused["min_s"] <= fused["median_s"] <= fused["max_s"]
        assert fused["floor_s"] > 0 and fused["pct_floor"] > 0
        assert set(fused["speedup"]) == {"keras", "tf-raw"}
        assert fused["note"].startswith("fused ")
        assert by_name[f"adam/float32/{shape}/keras"]["speedup"] == {}
        torch = by_name[f"adam/float32/{shape}/torch-fused"]
        if torch["status"] == "skipped":
            assert torch["note"]

    with open(tmp_path / "tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    assert {"median_s", "pct_floor", "speedup_vs_keras", "speedup_vs_tf-raw"} <= set(rows[0])
    if importlib.util.find_spec("matplotlib") is not None:  # in the test extra
        assert (tmp_path / "tiny.png").read_bytes().startswith(b"\x89PNG")

    # A saved run renders again, as Markdown for READMEs.
    assert cli.main(["--show", str(tmp_path / "tiny.json"), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| shape | impl | median ms |" in out and "| 3x1K | fusedopt |" in out


def test_steps_per_call_loops_tf_cases_and_is_recorded(tmp_path):
    # TF cases run 3 steps per tf.function call (XLA included); the raw kernel
    # runs one and says so.
    proc = run_cli("--shapes", "2x1K", "--optimizers", "adam", "--dtypes", "float32",
                   "--impls", "fusedopt,fusedopt-xla,keras,keras-xla,tf-raw,kernels",
                   "--repeats", "3",
                   "--warmup", "1", "--steps-per-call", "3", "--out", str(tmp_path),
                   "--name", "looped", "--no-plot")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 steps per call" in proc.stdout
    doc = json.loads((tmp_path / "looped.json").read_text())
    assert doc["settings"]["steps_per_call"] == 3
    by_impl = {c["impl"]: c for c in doc["cases"]}
    for impl in ("fusedopt", "fusedopt-xla", "keras", "keras-xla", "tf-raw"):
        case = by_impl[impl]
        assert case["steps_per_call"] == 3, impl
        if case["status"] == "skipped":  # keras-xla without an XLA JIT
            continue
        assert case["status"] == "ok", (impl, case["note"])
        assert len(case["times_s"]) == 3
    assert by_impl["fusedopt"]["note"] == "fused 2/2"
    # Inside XLA: FusedoptAdam's XLA kernel where built, else the stock update.
    xla_note = by_impl["fusedopt-xla"]["note"]
    if by_impl["fusedopt-xla"]["status"] != "ok":  # no XLA JIT here
        pass
    elif _ops.xla_kernels():
        assert xla_note == "fused 2/2", xla_note
    else:
        assert xla_note.startswith("fused 0/2; fallback (2): inside an XLA cluster"), xla_note
    assert by_impl["kernels"]["steps_per_call"] == 1
    with open(tmp_path / "looped.csv", newline="") as f:
        rows = {r["impl"]: r for r in csv.DictReader(f)}
    assert rows["fusedopt"]["steps_per_call"] == "3"
    assert cli.build_parser().parse_args([]).steps_per_call is None  # 1 for the TF cases
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--steps-per-call", "0"])


def test_list_and_filter(capsys):
    assert cli.main(["--list", "--filter", "adam/float32/20x1M/*",
                     "--filter", "300x256/tf-raw"]) == 0
    out = capsys.readouterr().out
    names = [line for line in out.splitlines() if line.startswith("adam")]
    assert "adam/float32/20x1M/fusedopt" in names
    assert "adam/float32/20x1M/keras-xla" in names
    assert "adam/float32/20x1M/fusedopt-xla" in names  # measured by default, beside it
    assert "adam/float32/300x256/tf-raw" in names
    assert "adam/float32/300x256/keras" not in names
    assert all("/20x1M/" in n or n.endswith("300x256/tf-raw") for n in names)


def test_quick_preset_has_the_foundation_cases(capsys):
    assert cli.main(["--quick", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("adam/float32/20x1M/fusedopt", "adam/float32/20x1M/keras",
                 "adam/float32/20x1M/tf-raw", "adam/float32/300x256/fusedopt",
                 "adam/float32/300x256/keras", "adam/float32/300x256/tf-raw"):
        assert name in out


def test_no_matching_case_is_a_usage_error():
    assert cli.main(["--filter", "no-such-case"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["--impls", "no-such-impl"])


def test_parse_shapes_and_counts():
    assert cases.parse_shapes("20x1M, 300x256,2x4k") == [
        cases.Shape(20, 1 << 20), cases.Shape(300, 256), cases.Shape(2, 4096)]
    assert str(cases.Shape(20, 1 << 20)) == "20x1M"
    assert str(cases.Shape(3, 1000)) == "3x1000"
    for bad in ("20", "0x5", "ax1M", "2x3x4"):
        with pytest.raises(ValueError):
            cases.parse_shapes(bad)


def test_bytes_per_param():
    assert cases.OPTIMIZERS["adam"].bytes_per_param("float32") == 28
    assert cases.OPTIMIZERS["adam"].bytes_per_param("float64") == 56
    assert cases.OPTIMIZERS["sgd"].bytes_per_param("float32") == 20
    assert cases.OPTIMIZERS["adam-gclip"].bytes_per_param("float32") == 32


def _fake(monkeypatch, name, setup, max_copies=1):
    monkeypatch.setitem(cases.IMPLEMENTATIONS, name,
                        Implementation(name, setup, "cpu", True, "test double", max_copies))


def test_rotation_errors_and_skips_in_process(monkeypatch, tmp_path, capsys):
    calls = {"copies": None, "steps": 0}

    def rotating(case, copies):
        calls["copies"] = copies
        arrays = [np.ones(case.shape.tensor_size, np.float32) for _ in range(copies)]

        def make(a):
            def step():
                np.multiply(a, 1.0, out=a)
                calls["steps"] += 1
            return step

        return Runner([make(a) for a in arrays], note="double")

    def broken(case, copies):
        raise RuntimeError("boom")

    def missing(case, copies):
        raise Skip("not here")

    _fake(monkeypatch, "t-rotating", rotating, max_copies=8)
    _fake(monkeypatch, "t-broken", broken)
    _fake(monkeypatch, "t-missing", missing)
    code = cli.main(["--shapes", "2x1K", "--optimizers", "adam", "--dtypes", "float32",
                     "--impls", "t-rotating,t-broken,t-missing", "--repeats", "4",
                     "--warmup", "1", "--out", str(tmp_path), "--name", "fake", "--no-plot"])
    assert code == 1  # an unexpected error is reported and fails the run
    doc = json.loads((tmp_path / "fake.json").read_text())
    status = {c["impl"]: c for c in doc["cases"]}
    assert status["t-rotating"]["status"] == "ok"
    assert status["t-rotating"]["copies"] == 8 == calls["copies"]
    assert status["t-rotating"]["cache"] == "rotate+evict"  # 8 copies of 32 KiB stay cached
    assert len(status["t-rotating"]["times_s"]) == 4
    assert calls["steps"] == 8 + 4  # warm-up touches every copy once
    assert status["t-broken"]["status"] == "error"
    assert "RuntimeError: boom" in status["t-broken"]["note"]
    assert "Traceback" in status["t-broken"]["error"]
    assert status["t-missing"]["status"] == "skipped"
    assert status["t-missing"]["note"] == "not here"
    assert not (tmp_path / "fake.png").exists()


def test_copies_and_cache_decision():
    adam = cases.OPTIMIZERS["adam"]
    impl = Implementation("x", None, "cpu", True, "", max_copies=1000)
    small = cases.Case(adam, "float32", cases.Shape(300, 256), impl)  # 1.2 MB
    large = cases.Case(adam, "float32", cases.Shape(20, 1 << 20), impl)  # 336 MB
    llc = 32 << 20
    copies = timing.copies_wanted(small, llc)
    assert timing.is_cold(small, copies, llc)
    assert not timing.is_cold(small, copies - 1, llc)
    assert timing.copies_wanted(large, llc) == 1
    assert timing.is_cold(large, 1, llc)


def test_speedups_compare_within_a_group():
    def rec(impl, ours, median, group="g"):
        return {"impl": impl, "ours": ours, "median_s": median, "status": "ok",
                "group": group, "speedup": {}}

    records = [rec("fusedopt", True, 1.0), rec("keras", False, 4.0),
               rec("tf-raw", False, 2.0), rec("keras", False, 100.0, group="other")]
    report.add_speedups(records)
    assert records[0]["speedup"] == {"keras": 4.0, "tf-raw": 2.0}
    assert records[1]["speedup"] == {}


def test_targets_are_ratios_of_one_run():
    def rec(name, median, floor=None, speedup=None):
        return {"name": name, "status": "ok", "median_s": median, "floor_s": floor,
                "speedup": speedup or {}}

    records = [rec("adam/float32/20x1M/fusedopt", 1.1, floor=1.0,
                   speedup={"keras": 5.0, "tf-raw": 0.9}),
               rec("adam-gclip/float32/20x1M/fusedopt", 1.2)]
    results = {r["description"]: r for r in targets.evaluate(records)}
    assert len(results) == 4  # the others' cases did not run
    floor = next(r for d, r in results.items() if "memory floor" in d)
    assert floor["value"] == pytest.approx(1.1) and floor["met"]
    raw = next(r for d, r in results.items() if "ResourceApplyAdam" in d)
    assert raw["value"] == 0.9 and not raw["met"]
    clip = next(r for d, r in results.items() if "clip" in d)
    assert clip["value"] == pytest.approx(1.2 / 1.1) and clip["met"]
    assert any(line.startswith("NOT MET") for line in targets.lines(list(results.values())))


def test_a_target_about_one_harness_skips_runs_of_another():
    def rec(steps_per_call, speedup):
        return {"name": "adam/float32/300x256/fusedopt-jax", "status": "ok", "median_s": 1.0,
                "floor_s": None, "speedup": {"keras-jax": speedup},
                "steps_per_call": steps_per_call}

    def loop_target(records):
        return [r for r in targets.evaluate(records) if "jitted loop" in r["description"]]

    assert loop_target([rec(1, 2.0)]) == []  # one step per call: another harness
    (result,) = loop_target([rec(50, 1.25)])
    assert result["value"] == 1.25 and not result["met"] and result["steps_per_call"] == 50
    assert "[50 steps per call]" in targets.lines([result])[0]


def _gclip_case():
    impl = Implementation("kernels", None, "cpu", True, "")
    return cases.Case(cases.OPTIMIZERS["adam-gclip"], "float32", cases.Shape(20, 1 << 20), impl)


def test_a_case_in_a_fast_moment_is_compared_with_the_memory_beside_it():
    # The run's floor is the median probe (56 GB/s), but the samples ran while
    # memory streamed at 103 GB/s (the probe beside each says so): 160% of the
    # run's floor, yet 87% of the floor of that moment. Seen in
    # cpu-2026-11-25.json: adam-gclip/float32/20x1M/kernels at 7.4 ms.
    case = _gclip_case()
    m = timing.Measurement(status="ok", times_s=[7.42e-3] * 5, probe_gbps=[103.0] * 5)
    r = report.case_record(case, m, {"cpu": {"gbps": 56.5}})
    assert r["pct_floor"] == pytest.approx(160, abs=1)
    assert r["floor_gbps_local"] == 103.0
    assert r["pct_floor_local"] == pytest.approx(87.8, abs=0.5)
    assert report.floor_remark(r) == "88% of the floor beside it (103 GB/s)"
    assert report.beyond_floor_lines([r]) == []
    r.update(speedup={}, params_per_s=1.0, gbps=90.4, floor_s=11.9e-3, shape="20x1M")
    (_, _, rows, _), = report.table_sections([r], {"cpu": {"gbps": 56.5}})
    assert rows[0][7] == "160" and rows[0][-1] == "88% of the floor beside it (103 GB/s)"
    # Each sample against its own probe: fast and slow moments mixed.
    m = timing.Measurement(status="ok", times_s=[7.4e-3, 13.6e-3, 7.4e-3, 13.6e-3, 13.6e-3],
                           probe_gbps=[103.0, 56.0, 103.0, 56.0, 56.0])
    r = report.case_record(case, m, {"cpu": {"gbps": 56.0}})
    assert r["pct_floor_local"] == pytest.approx(88, abs=0.5)
    assert report.floor_remark(r) == ""  # at the run's floor: nothing to explain


def test_a_case_beyond_the_floor_beside_it_is_reported():
    # Twice as fast as the memory allows at that moment: the case skips work
    # (or counts the wrong bytes, or runs from the cache).
    m = timing.Measurement(status="ok", times_s=[5.8e-3] * 3, probe_gbps=[56.0] * 3)
    r = report.case_record(_gclip_case(), m, {"cpu": {"gbps": 56.0}})
    assert r["pct_floor_local"] == pytest.approx(207, abs=1)
    (line,) = report.beyond_floor_lines([r])
    assert line.startswith("BEYOND THE FLOOR: adam-gclip/float32/20x1M/kernels")
    # Without probe samples (a saved run from before them, GPU cases): no verdict.
    r = report.case_record(_gclip_case(), timing.Measurement(status="ok", times_s=[5.8e-3]),
                           {"cpu": {"gbps": 56.0}})
    assert r["pct_floor_local"] is None and report.beyond_floor_lines([r]) == []


def test_cli_probes_beside_every_sample_and_flags_work_not_done(monkeypatch, tmp_path):
    # A "step" that does nothing is far beyond the floor beside it: the run
    # says so in its notes and its output, with one probe sample per timed sample.
    def idle(case, copies):
        return Runner([lambda: None])

    _fake(monkeypatch, "t-idle", idle)
    code = cli.main(["--shapes", "4x64K", "--optimizers", "adam-gclip", "--dtypes", "float32",
                     "--impls", "t-idle,kernels", "--repeats", "4", "--warmup", "1",
                     "--out", str(tmp_path), "--name", "idle", "--no-plot"])
    assert code == 0
    doc = json.loads((tmp_path / "idle.json").read_text())
    by_impl = {c["impl"]: c for c in doc["cases"]}
    for case in by_impl.values():
        assert len(case["probe_gbps_samples"]) == len(case["times_s"]) == 4
        assert case["floor_gbps_local"] > 0 and case["pct_floor_local"] > 0
    assert any(n.startswith("BEYOND THE FLOOR: adam-gclip/float32/4x64K/t-idle")
               for n in doc["notes"])
    with open(tmp_path / "idle.csv", newline="") as f:
        assert {"floor_gbps_local", "pct_floor_local"} <= set(next(csv.DictReader(f)))


def test_kernels_adam_gclip_case_runs_the_clipped_update():
    # The bench's kernels case for adam-gclip passes global_clip_norm (its
    # random gradients have a norm above 1, so every step clips): the same
    # update as a float64 clip-then-Adam, not plain Adam.
    from fusedopt.bench import kernel_cases

    case = dataclasses.replace(_gclip_case(), shape=cases.Shape(3, 40000))
    call, n_state = kernel_cases._kernel_step(case)
    arrays = kernel_cases._numpy_arrays(case, n_state, np.random.default_rng(0))
    p, g, m, v = ([a.astype(np.float64) for a in x] for x in arrays)
    call(arrays, 1)
    norm = np.sqrt(sum(np.sum(x * x) for x in g))
    assert norm > 2  # clips: the update differs from plain Adam
    for i in range(3):
        gi = g[i] / norm
        m_ref = m[i] + (gi - m[i]) * 0.1
        v_ref = v[i] + (gi * gi - v[i]) * 0.001
        p_ref = p[i] - 1e-3 * np.sqrt(1 - 0.999) / (1 - 0.9) * m_ref / (np.sqrt(v_ref) + 1e-7)
        np.testing.assert_allclose(arrays[2][i], m_ref, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(arrays[3][i], v_ref, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(arrays[0][i], p_ref, rtol=1e-5, atol=1e-6)


def test_paired_alternates_two_cases_and_writes_their_ratio(tmp_path, capsys):
    from fusedopt.bench import paired

    assert paired.main(["--pair", "adam-gclip:adam", "--pair", "adam:adam", "--shapes",
                        "3x1K", "--impl", "kernels", "--samples", "6", "--out",
                        str(tmp_path), "--name", "p"]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["schema"] == "fusedopt-bench-paired/1"
    first, same = doc["pairs"]
    assert first["a"] == "adam-gclip/float32/3x1K/kernels"
    assert first["b"] == "adam/float32/3x1K/kernels"
    ab, ba = first["a_built_first"], first["b_built_first"]
    assert (ab["a"], ba["a"]) == (first["a"], first["b"])  # both build orders
    assert first["ratio"] == pytest.approx((ab["ratio_median"] / ba["ratio_median"]) ** 0.5)
    for r in (ab, ba, same["a_built_first"], same["b_built_first"]):
        assert len(r["times_a_s"]) == len(r["times_b_s"]) == 6
        ratios = sorted(a / b for a, b in zip(r["times_a_s"], r["times_b_s"]))
        assert r["ratio_median"] == pytest.approx((ratios[2] + ratios[3]) / 2)
        assert r["ratio_q25"] <= r["ratio_median"] <= r["ratio_q75"]
        assert r["cache"] == "evict"  # 3x1K fits in any cache
    assert "adam-gclip/float32/3x1K/kernels / adam/float32/3x1K/kernels" in capsys.readouterr().out


def test_paired_samples_are_per_step_with_steps_per_call(tmp_path, monkeypatch):
    """--steps-per-call reaches each case, and a call's time is divided by the
    steps its runner says one call performs (a fake clock: every call 1 s)."""
    from fusedopt.bench import cases, paired

    seen = []

    def setup(case, copies):
        seen.append(case.steps_per_call)
        loops = case.impl.name == "looping"
        return cases.Runner([lambda: None], steps_per_call=case.steps_per_call if loops else 1)

    for name in ("looping", "single"):
        monkeypatch.setitem(cases.IMPLEMENTATIONS, name,
                            cases.Implementation(name, setup, "cpu", False, name, 1, False))
    clock = iter(range(10**6))
    monkeypatch.setattr(paired.time, "perf_counter", lambda: float(next(clock)))
    assert paired.main(["--pair", "adam@looping:adam@single", "--shapes", "3x1K",
                        "--steps-per-call", "4", "--samples", "4", "--out", str(tmp_path),
                        "--name", "p"]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["steps_per_call"] == 4 and seen == [4, 4, 4, 4]
    (pair,) = doc["pairs"]
    for r in (pair["a_built_first"], pair["b_built_first"]):
        looped = r["times_a_s"] if r["a"].endswith("/looping") else r["times_b_s"]
        single = r["times_b_s"] if r["a"].endswith("/looping") else r["times_a_s"]
        assert looped == [0.25] * 4 and single == [1.0] * 4
    assert pair["ratio"] == pytest.approx(0.25)


def test_paired_refuses_unknown_optimizers_and_gpu_implementations():
    from fusedopt.bench import paired

    with pytest.raises(SystemExit):
        paired.main(["--pair", "adam:nope"])
    with pytest.raises(SystemExit):
        paired.main(["--pair", "adam:sgd", "--impl", "kernels-cuda"])


# ------------------------------------------------- argument checks (issue 12)


def _usage_error(capsys, argv, main=None, prog="fusedopt-bench"):
    """Runs main(argv) (default: cli.main), which must stop with argparse's
    usage error; returns the error line (the last line of stderr)."""
    with pytest.raises(SystemExit) as stop:
        (main or cli.main)(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran, nothing was printed
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith(f"{prog}: error: "), captured.err
    return lines[-1].removeprefix(f"{prog}: error: ")


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "argument --repeats: expected an integer >= 1, got 0"),
    (["--repeats", "three"], "argument --repeats: expected an integer >= 1, got 'three'"),
    (["--warmup", "-1"], "argument --warmup: expected an integer >= 0, got -1"),
    (["--max-case-seconds", "0"], "argument --max-case-seconds: expected a number of seconds "
                                  "> 0, got 0"),
    (["--max-case-seconds", "nan"], "argument --max-case-seconds: expected a number of "
                                    "seconds > 0, got nan"),
    (["--max-case-seconds", "-2.5"], "argument --max-case-seconds: expected a number of "
                                     "seconds > 0, got -2.5"),
    (["--steps-per-call", "0"], "argument --steps-per-call: expected an integer >= 1, got 0"),
    (["--fit", "--calls-per-round", "1"], "argument --calls-per-round: expected an integer "
                                          ">= 2, got 1"),
    (["--calls-per-round", "3"], "argument --calls-per-round: only with --fit"),
    (["--shapes", "20"], "argument --shapes: not a shape: '20' (expected NxSIZE, e.g. 20x1M, or one of ln402)"),
    (["--name", "a/b"], "argument --name: expected a file name prefix without '/', got 'a/b'"),
])
def test_numeric_and_name_options_are_checked_before_anything_runs(capsys, tmp_path, argv,
                                                                    message):
    out = tmp_path / "new"
    assert _usage_error(capsys, [*argv, "--out", str(out)]) == message
    assert not out.exists()  # nothing written either


@pytest.mark.parametrize("argv, message", [
    (["--optimizers", "adam,nope"], "argument --optimizers: unknown optimizer 'nope' (valid: "
     + ", ".join(cases.OPTIMIZERS) + ")"),
    (["--dtypes", "int8,float32"], "argument --dtypes: unknown dtype 'int8' (valid: float16, "
                                   "bfloat16, float32, float64)"),
    (["--impls", "keras,no-such-impl"], "argument --impls: unknown implementation "
     "'no-such-impl' (valid: " + ", ".join(cases.IMPLEMENTATIONS) + ")"),
    (["--fit", "--optimizers", "adam-skipnf"], "argument --optimizers: adam-skipnf has options "
     "the stock Keras optimizer lacks, so --fit has nothing to train against (valid with "
     "--fit: adam, adamw, sgd, adam-gclip)"),
    (["--fit", "--dtypes", "float64"], "argument --dtypes: --fit trains float32 models only"),
    (["--fit", "--shapes", "2x3"], "argument --shapes: not allowed with --fit (it trains whole "
     "models on the CPU, fusedopt against the stock optimizer)"),
    (["--fit", "--gpu"], "argument --gpu: not allowed with --fit (it trains whole models on "
     "the CPU, fusedopt against the stock optimizer)"),
])
def test_unknown_names_are_refused_naming_the_valid_ones(capsys, argv, message):
    assert _usage_error(capsys, argv) == message


def test_out_must_be_a_writable_directory(capsys, monkeypatch, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    assert _usage_error(capsys, ["--out", str(a_file)]) == (
        f"argument --out: {str(a_file)!r} is a file, expected a directory")
    assert a_file.read_text() == "keep me"
    # /proc takes no new directory, even from root.
    message = _usage_error(capsys, ["--out", "/proc/fusedopt-bench-results"])
    assert message.startswith("argument --out: cannot create the directory "
                              "'/proc/fusedopt-bench-results': ")
    # A directory where a result file would go.
    (tmp_path / "taken" / "run.json").mkdir(parents=True)
    assert _usage_error(capsys, ["--out", str(tmp_path / "taken"), "--name", "run"]) == (
        f"argument --out: {str(tmp_path / 'taken' / 'run.json')!r} is a directory, the run "
        "would write a file there")
    if os.geteuid() != 0:  # root writes into any directory
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert _usage_error(capsys, ["--out", str(locked)]).startswith(
            f"argument --out: the directory {str(locked)!r} is not writable: ")
    # A missing directory (and its parents) is created, and the run writes there.
    _fake(monkeypatch, "t-idle", lambda case, copies: Runner([lambda: None]))
    out = tmp_path / "made" / "here"
    assert cli.main(["--shapes", "2x1K", "--optimizers", "adam", "--dtypes", "float32",
                     "--impls", "t-idle", "--repeats", "3", "--warmup", "0", "--out", str(out),
                     "--name", "idle", "--no-plot"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["idle.csv", "idle.json"]


def test_show_refuses_missing_and_malformed_files(capsys, tmp_path):
    missing = tmp_path / "missing.json"
    assert _usage_error(capsys, ["--show", str(missing)]) == (
        f"argument --show: cannot read {str(missing)!r}: No such file or directory")
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "fusedopt-bench/1", ')
    assert _usage_error(capsys, ["--show", str(broken)]).startswith(
        f"argument --show: {str(broken)!r} is not JSON: ")
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    assert _usage_error(capsys, ["--show", str(other)]) == (
        f"argument --show: {str(other)!r} is not a fusedopt-bench result (schema None, "
        "expected 'fusedopt-bench/1' or 'fusedopt-bench-fit/1')")
    for schema, body in ((report.SCHEMA, {"cases": [{"name": "x"}], "floor": {}}),
                         (fit.SCHEMA, {"rows": [{"status": "ok"}]})):
        partial = tmp_path / "partial.json"
        partial.write_text(json.dumps({"schema": schema, **body}))
        assert _usage_error(capsys, ["--show", str(partial)]).startswith(
            f"argument --show: {str(partial)!r} is not a complete {schema} result (KeyError: ")


def test_help_names_the_valid_values():
    helps = {a.dest: a.help for a in cli.build_parser()._actions}
    impls = helps["impls"]
    assert impls.endswith(")"), impls  # a whole sentence, not "default: all but"
    for name in cases.IMPLEMENTATIONS:
        assert name in impls
    for preset in (cli.QUICK, cli.GPU):
        assert ", ".join(preset.impls) in impls
    assert "float16, bfloat16, float32, float64" in helps["dtypes"]
    assert ", ".join(cases.OPTIMIZERS) in helps["optimizers"]


# ------------------------------------------------------------ --fit (issue 16)

FIT_ROW_FIELDS = {
    "name", "group", "model", "mode", "jit_compile", "steps_per_execution", "optimizer",
    "params", "variables", "batch_size", "status", "note", "rounds", "calls_per_round",
    "steps_timed_per_round", "warmup_rounds", "ratios", "ratio_median", "ratio_q25", "ratio_q75",
    "weights_max_ulp", "weights_max_ulp_at_scale", "weights_elements", "weights_differing",
    "parity_max_ulp", "parity",
    "weights_match", "fused_variables", "fused_paths_total", "not_fused",
    "stock_optimizer_s", "fusedopt_optimizer_s", "stock_optimizer_share",
    "fusedopt_optimizer_share", "loadavg", "rss_bytes",
} | {f"{impl}_{stat}" for impl in ("stock", "fusedopt", "no_update")
     for stat in ("times_s", "median_s", "q25_s", "q75_s", "first_round_s")}


def _tiny_mlp(keras):
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="relu"),
                             keras.layers.Dense(3)])


@pytest.fixture
def tiny_fit(monkeypatch):
    """--fit's full grid replaced by a 5-7-3 MLP, batch 4: one group (Adam,
    SGD) and one with steps_per_execution=2 (Adam with global_clipnorm). No
    XLA group: compiling takes seconds, and the contract is the same one as
    for the clip (reported, not judged; test_fit_grid_selection_and_contract)."""
    monkeypatch.setitem(fit.MODELS, "tiny", fit.FitModel(
        "tiny", "MLP 5-7-3", _tiny_mlp, (5,), classes=3, batch_size=4))
    monkeypatch.setattr(fit, "FULL", fit.FitPreset(
        groups=(fit.FitGroup("tiny", False, 1, ("adam", "sgd")),
                fit.FitGroup("tiny", False, 2, ("adam-gclip",))),
        settings=fit.FitSettings(rounds=3, warmup=0, calls_per_round=2, max_seconds=60)))


def test_fit_reports_every_field_and_flags_weights_that_differ(tiny_fit, monkeypatch, tmp_path,
                                                               capsys):
    # Adam: the real pair, bit-identical without XLA. SGD: fusedopt given
    # twice the stock learning rate, so the check must see the weights part.
    import keras

    import fusedopt

    real = fit.make_optimizers
    monkeypatch.setattr(fit, "make_optimizers", lambda name: real(name) if name != "sgd" else (
        keras.optimizers.SGD(learning_rate=1e-2), fusedopt.SGD(learning_rate=2e-2)))
    code = cli.main(["--fit", "--repeats", "2", "--calls-per-round", "3", "--out",
                     str(tmp_path), "--name", "fit"])
    out = capsys.readouterr().out
    assert code == 1, out  # a row beyond the parity contract fails the run
    doc = json.loads((tmp_path / "fit.json").read_text())
    assert doc["schema"] == fit.SCHEMA
    assert {"created", "command", "settings", "machine", "versions", "build_info",
            "keras_backend", "rows", "notes", "wall_s", "cpu_s"} <= set(doc)
    assert doc["settings"]["rounds"] == 2 and doc["settings"]["calls_per_round"] == 3
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == ["tiny/graph/adam", "tiny/graph/sgd", "tiny/graph/spe2/adam-gclip"]
    for name, r in rows.items():
        assert FIT_ROW_FIELDS <= set(r), FIT_ROW_FIELDS - set(r)
        assert r["status"] == "ok", r.get("error")
        assert r["params"] == 5 * 7 + 7 + 7 * 3 + 3 and r["variables"] == 4
        assert r["rounds"] == 2
        for impl in ("stock", "fusedopt", "no_update"):
            times = r[f"{impl}_times_s"]
            assert len(times) == 2 and all(t > 0 for t in times)
            assert r[f"{impl}_q25_s"] <= r[f"{impl}_median_s"] <= r[f"{impl}_q75_s"]
        assert r["ratios"] == pytest.approx(
            [s / f for s, f in zip(r["stock_times_s"], r["fusedopt_times_s"])])
        assert r["ratio_q25"] <= r["ratio_median"] <= r["ratio_q75"]
        assert r["weights_elements"] == r["params"]
        assert r["fused_variables"] == r["fused_paths_total"] == 4 and r["not_fused"] == {}
    graph, clip, bad = (rows["tiny/graph/adam"], rows["tiny/graph/spe2/adam-gclip"],
                        rows["tiny/graph/sgd"])
    # Bit-identical is the contract (float32, no XLA), except with a clip by
    # norm, whose distance is reported.
    assert graph["parity_max_ulp"] == 0 and graph["weights_match"] is True
    assert graph["weights_max_ulp"] == 0 and graph["weights_differing"] == 0
    assert clip["parity_max_ulp"] is None and clip["weights_match"] is None
    assert clip["weights_max_ulp"] is not None
    assert graph["steps_timed_per_round"] == 2 and graph["steps_per_execution"] == 1
    assert clip["steps_timed_per_round"] == 4 and clip["steps_per_execution"] == 2
    assert not clip["jit_compile"] and clip["mode"] == "graph spe=2"
    assert bad["weights_match"] is False and bad["weights_max_ulp"] > 0
    assert 0 < bad["weights_differing"] <= bad["weights_elements"]
    assert len(doc["notes"]) == 1
    assert doc["notes"][0].startswith("WEIGHTS DIFFER: tiny/graph/sgd: after 0 warm-up and 2 "
                                      "timed rounds the fusedopt and stock weights are up to ")

    assert "speedup" in out and "opt. share keras" in out and "identical" in out
    assert "MISMATCH: max" in out and doc["notes"][0] in out
    with open(tmp_path / "fit.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["name"] for r in csv_rows] == list(rows)
    assert set(fit.CSV_FIELDS) == set(csv_rows[0])
    assert cli.main(["--show", str(tmp_path / "fit.json"), "--markdown"]) == 0
    shown = capsys.readouterr().out
    assert "| model | mode | optimizer | keras ms | fusedopt ms | speedup |" in shown
    assert "| tiny | graph | adam |" in shown and "| tiny | graph spe=2 | adam-gclip |" in shown
    assert doc["notes"][0] in shown


def test_no_update_optimizer_reads_the_gradients_and_changes_no_weight():
    import keras

    keras.utils.set_random_seed(3)
    model = _tiny_mlp(keras)
    before = model.get_weights()
    optimizer = fit.no_update_optimizer()
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = fit._data(fit.FitModel("t", "", _tiny_mlp, (5,), classes=3, batch_size=4), 2)
    model.fit(x, y, batch_size=4, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert float(optimizer.gradient_sum.numpy()) != 0.0  # the last step's gradients


def test_weights_distance_counts_ulps():
    a = np.array([1.0, -2.0, 0.0, 3.0, np.nan], np.float32)
    assert fit.weights_distance([a], [a.copy()]) == {
        "max_ulp": 0, "max_ulp_at_scale": 0.0, "elements": 5, "differing": 0, "note": ""}
    b = a.copy()
    b[0] = np.nextafter(np.nextafter(b[0], np.float32(2)), np.float32(2))  # 2 ulp up
    b[1] = np.nextafter(b[1], np.float32(0))  # 1 ulp towards zero
    b[2] = -0.0  # -0 and +0 are equal
    d = fit.weights_distance([a], [b])
    assert (d["max_ulp"], d["differing"]) == (2, 2)
    # Through zero: the smallest subnormals of either sign are 2 ulp apart.
    tiny = np.float32(1e-45)
    assert fit.weights_distance([np.array([tiny])], [np.array([-tiny])])["max_ulp"] == 2
    # At the array's scale: a value near zero 1e6 of its own ulps off, in an
    # array whose largest value is 1, is 1.5 ulps of 1 off.
    near = np.array([1.0, 1e-6], np.float32)
    off = near.copy()
    off[1] += np.float32(1.5 * np.spacing(np.float32(1.0)))
    d = fit.weights_distance([off], [near])
    assert d["max_ulp"] > 10_000 and d["max_ulp_at_scale"] == pytest.approx(1.5, rel=0.01)
    # float64 and float16 too, and one array among many.
    x64 = np.linspace(-1, 1, 11)
    y64 = x64.copy()
    y64[3] = np.nextafter(y64[3], 5.0)
    h = np.array([1.0], np.float16)
    d = fit.weights_distance([h, x64], [h, y64])
    assert (d["max_ulp"], d["differing"], d["elements"]) == (1, 1, 12)
    # Not comparable: a NaN against a number, other shapes, other counts.
    c = a.copy()
    c[3] = np.nan
    assert fit.weights_distance([a], [c])["max_ulp"] is None
    assert fit.weights_distance([a], [a[:4]])["note"] == "array 0: float32[5] against float32[4]"
    assert fit.weights_distance([a], [a, a])["max_ulp"] is None


def test_fit_reports_variables_that_did_not_take_the_fused_path():
    class Stub:
        fused_paths = {"dense/kernel": "fused", "embedding/embeddings":
                       "fallback: sparse (IndexedSlices) gradient"}

    summary = fit._fused_paths_summary(Stub(), 2)
    assert (summary["fused"], summary["total"]) == (1, 2)
    assert summary["not_fused"] == {"embedding/embeddings":
                                    "fallback: sparse (IndexedSlices) gradient"}
    assert fit._fused_paths_summary(Stub(), 3)["note"] == (
        "fused_paths lists 2 variables, the model trains 3")
    row = {"name": "m/graph/adam", "status": "ok", "weights_match": True,
           "not_fused": summary["not_fused"], "fused_paths_total": 2}
    assert fit.problem_lines([row]) == [
        "NOT FUSED m/graph/adam: 1 of 2 variables, fallback: sparse (IndexedSlices) gradient "
        "(embedding/embeddings)"]


def test_fit_grid_selection_and_contract():
    groups = fit.select_groups(fit.FULL)
    names = [n for g in groups for n in g.row_names()]
    assert len(names) == len(set(names)) == 20
    for model in ("mlp", "dense-ln", "conv"):
        for mode in ("graph", "xla"):
            for opt in ("adam", "adamw", "sgd"):
                assert f"{model}/{mode}/{opt}" in names
    assert "dense-ln/graph/spe20/adam" in names
    # --steps-per-call 20 makes dense-ln's two graph groups one.
    merged = fit.select_groups(fit.FULL, steps_per_execution=20, patterns=["dense-ln/graph"])
    assert [(g.name, g.optimizers) for g in merged] == [
        ("dense-ln/graph/spe20", ("adam", "adamw", "sgd"))]
    only = fit.select_groups(fit.FULL, optimizers=["adam-gclip"], patterns=["mlp/*"])
    assert [n for g in only for n in g.row_names()] == ["mlp/graph/adam-gclip",
                                                        "mlp/xla/adam-gclip"]
    assert fit.parity_contract("adam", False)[0] == 0
    assert fit.parity_contract("sgd", True)[0] is None
    assert fit.parity_contract("adam-gclip", False)[0] is None
    assert "adam-skipnf" not in fit.fit_optimizers()


def test_fit_grid_on_torch_names_its_modes_and_drops_what_keras_torch_refuses():
    # Keras-torch runs fit eagerly, or under torch.compile with jit_compile=True;
    # its fit refuses steps_per_execution > 1, so those groups are dropped (and named).
    groups = fit.select_groups(fit.FULL, backend="torch")
    names = [n for g in groups for n in g.row_names()]
    assert len(names) == 18 and "dense-ln/eager/adam" in names and "conv/compile/sgd" in names
    assert not any("graph" in n or "xla" in n or "spe" in n for n in names)
    assert fit.unsupported_groups(fit.FULL, "torch") == ["dense-ln/eager/spe20",
                                                         "dense-ln/compile/spe20"]
    assert fit.unsupported_groups(fit.FULL, "tensorflow") == []
    assert [g.name for g in fit.select_groups(fit.QUICK, backend="torch")] == [
        "mlp-small/eager", "dense-ln-small/eager", "mlp-small/compile"]
    # SGD is bit-identical to Keras-torch's foreach SGD; Adam within 2 step
    # ulps per step (reported), torch.compile reported.
    assert fit.parity_contract("sgd", False, "torch")[0] == 0
    assert fit.parity_contract("adam", False, "torch")[0] is None
    assert fit.parity_contract("adamw", False, "torch")[0] is None
    assert "torch.compile" in fit.parity_contract("sgd", True, "torch")[1]


def test_fit_quick_lists_its_rows(capsys):
    assert cli.main(["--fit", "--quick", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mlp-small/graph/adam\ndense-ln-small/graph/adam\nmlp-small/xla/adam\n")


def test_paired_checks_its_arguments_before_running(capsys, tmp_path):
    from fusedopt.bench import paired

    a_file = tmp_path / "f"
    a_file.write_text("")
    for argv, message in (
            (["--samples", "2"], "argument --samples: expected an integer >= 3, got 2"),
            (["--out", str(a_file)], f"argument --out: {str(a_file)!r} is a file, expected a "
                                     "directory"),
            (["--shapes", "1x"], "argument --shapes: not a count: '' (examples: 300, 4K, 1M)"),
            (["--name", "../x"], "argument --name: expected a file name prefix without '/', "
                                 "got '../x'")):
        assert _usage_error(capsys, ["--pair", "adam:adam", *argv], paired.main,
                            "python -m fusedopt.bench.paired") == message
