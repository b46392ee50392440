"""Timing one case: set up, warm up, then time single steps from a cold cache.

What one sample is: the wall time of one call of one optimizer step (host
clock, ``time.perf_counter``; on a GPU, CUDA events around the step), with
Python's garbage collector off, divided by the steps the call ran
(``Runner.steps_per_call``, 1 unless ``--steps-per-call`` made a TF case
loop). ``first_call_s`` stays the whole first call. The report uses the
median of the samples.

Cold cache: a real training step runs the forward and backward passes
between two optimizer steps, so the optimizer's tensors are not in the cache
when it starts. Cases whose tensors fit in the cache are kept honest in one of
two ways, chosen per case and recorded in the results:

- ``rotate``: the implementation builds several copies of its tensors and the
  samples cycle through them, so that between two uses of one copy the others
  have pushed it out of the cache (at least COLD_MULTIPLE = 4x the last-level cache in between).
  Used where copies are cheap (NumPy/PyTorch arrays).
- ``evict``: an untimed pass over a buffer of 4x the last-level cache before
  each sample. Used where copies are expensive (a TF step is traced once per
  copy, which takes seconds for hundreds of variables), or where the copies
  an implementation can afford do not reach 4x the cache.

Cases larger than 4x the cache need neither (``none``). ``--warm-cache``
turns both off (``warm``): one copy, timed from whatever the cache holds.

The memory beside each sample: ``measure(..., probe=...)`` takes one sample
of the streaming probe (floor.py) right before each timed sample, untimed, and
keeps it in ``Measurement.probe_gbps``. On a shared machine the memory
bandwidth is not constant (on the 2-core VM here it switched between about
53 and 103 GB/s, for a few samples to a few seconds at a time, and the Adam
kernel's time halved with it), so each sample is also compared with the floor
measured just before it, not only with the run's median (report.py). The
probe's pass also leaves the cache cold.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
import traceback

from fusedopt.bench.cases import Case, Skip

# Copies of a case's tensors are capped at this many bytes in all.
COPIES_MEMORY_CAP = 1 << 30
MIN_SAMPLES = 3
# Data touched between two uses of a copy, in last-level caches, for the copy
# to count as evicted (2x would do for an LRU cache; 4x leaves a margin for
# victim caches and caches larger than the OS reports).
COLD_MULTIPLE = 4


@dataclasses.dataclass
class Settings:
    """How to time each case."""

    repeats: int = 20  # timed samples per case (fewer if max_seconds runs out)
    warmup: int = 2  # untimed calls first (at least one per copy)
    max_seconds: float = 5.0  # stop sampling after this, once MIN_SAMPLES are taken


@dataclasses.dataclass
class Measurement:
    """The raw outcome of timing one case."""

    status: str  # "ok", "skipped" or "error"
    note: str = ""
    times_s: list = dataclasses.field(default_factory=list)
    first_call_s: float | None = None  # includes tracing / XLA compilation
    setup_s: float | None = None
    copies: int = 0
    cache: str = ""  # "none", "rotate", "rotate+evict", "evict" or "warm"
    loadavg: list | None = None
    rss_bytes: int | None = None  # the process's resident memory after the case
    error: str | None = None  # traceback, for status "error"
    steps_per_call: int = 1  # optimizer steps per timed call; times_s are per step
    # The streaming probe's bandwidth right before each timed sample (GB/s),
    # when measure() was given a probe; one entry per entry of times_s.
    probe_gbps: list = dataclasses.field(default_factory=list)


def copies_wanted(case: Case, cache_bytes: int) -> int:
    """Copies needed so that each one is evicted before it is used again."""
    footprint = max(case.footprint_bytes, 1)
    if footprint >= COLD_MULTIPLE * cache_bytes:
        return 1
    wanted = math.ceil(COLD_MULTIPLE * cache_bytes / footprint) + 1
    return max(1, min(wanted, case.impl.max_copies, COPIES_MEMORY_CAP // footprint))


def is_cold(case: Case, copies: int, cache_bytes: int) -> bool:
    """Whether cycling through ``copies`` copies alone keeps the cache cold."""
    others = max(copies - 1, 1)
    return others * case.footprint_bytes >= COLD_MULTIPLE * cache_bytes


def measure(case: Case, settings: Settings, evictor, probe=None) -> Measurement:
    """Sets up, warms up and times ``case``. Never raises (except KeyboardInterrupt).

    ``evictor`` is a callable flushing the case device's caches, with a
    ``cache_bytes`` attribute; None times one copy from a warm cache.
    ``probe``: optional ``probe() -> GB/s``, one sample of the memory
    bandwidth, called (untimed) right before each timed sample.
    """
    result = Measurement(status="ok")
    runner = steps = None
    gc_was_enabled = gc.isenabled()
    try:
        cache_bytes = evictor.cache_bytes if evictor is not None else 0
        copies = copies_wanted(case, cache_bytes) if evictor is not None else 1
        start = time.perf_counter()
        runner = case.impl.setup(case, copies)
        result.setup_s = time.perf_counter() - start
        steps = runner.steps
        result.copies = len(steps)
        result.steps_per_call = per_call = max(1, runner.steps_per_call)
        cold = evictor is None or is_cold(case, len(steps), cache_bytes)
        evict = None if cold else evictor
        if evictor is None:
            result.cache = "warm"
        elif case.footprint_bytes >= COLD_MULTIPLE * cache_bytes:
            result.cache = "none"
        elif len(steps) > 1:
            result.cache = "rotate" if cold else "rotate+evict"
        else:
            result.cache = "evict"

        sync = runner.sync or (lambda: None)
        start = time.perf_counter()
        steps[0]()
        sync()
        result.first_call_s = time.perf_counter() - start
        for i in range(1, max(settings.warmup, len(steps))):
            steps[i % len(steps)]()
        sync()
        if runner.after_warmup is not None:
            result.note = runner.after_warmup()
        elif runner.note:
            result.note = runner.note

        gc.collect()
        gc.disable()
        clock = runner.clock
        begin = time.perf_counter()
        for i in range(settings.repeats):
            if i >= MIN_SAMPLES and time.perf_counter() - begin > settings.max_seconds:
                break
            if probe is not None:
                result.probe_gbps.append(probe())
            if evict is not None:
                evict()
            step = steps[i % len(steps)]
            if clock is not None:
                clock_start, clock_stop = clock()
                clock_start()
                step()
                result.times_s.append(clock_stop() / per_call)
            else:
                t0 = time.perf_counter()
                step()
                sync()
                result.times_s.append((time.perf_counter() - t0) / per_call)
    except Skip as e:
        result.status, result.note = "skipped", str(e)
        result.times_s, result.probe_gbps = [], []
    except Exception as e:  # noqa: BLE001 - one broken case must not stop the run
        result.status = "error"
        result.note = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        result.error = traceback.format_exc()
        result.times_s, result.probe_gbps = [], []
    finally:
        if gc_was_enabled:
            gc.enable()
        if runner is not None and runner.cleanup is not None:
            runner.cleanup()
        runner = steps = None  # free the tensors before the next case
        gc.collect()
    result.loadavg = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result.rss_bytes = _rss_bytes()
    return result


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
