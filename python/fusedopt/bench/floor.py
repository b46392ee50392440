"""The machine's memory floor, and keeping timed data out of the caches.

Every optimizer step is memory-bound: it must read and write each parameter's
arrays at least once (Adam float32: 28 bytes per parameter). The floor of a
case is therefore ``bytes it must move / bandwidth``, where the bandwidth is
measured here, in the same run:

- CPU: ``fusedopt._C.stream_inplace``, a multi-threaded in-place streaming loop
  (``x *= 1.0`` over a buffer of at least 4x the last-level cache, on the same
  thread pool as the kernels) that reads and writes 8 bytes per float32
  element. In place, like the optimizers; a copy would also pay
  write-allocate traffic, and one thread would not saturate memory.
- CUDA: a large device-to-device copy, counting bytes read plus written.

The bandwidth is the median of all samples (the cases are medians too).

``Evictor`` streams through a buffer of 4x the last-level cache between timed
samples of cases whose tensors would otherwise stay in the cache.
"""

from __future__ import annotations

import glob
import os
import statistics
import time

import numpy as np

_DEFAULT_LLC = 32 << 20
_MIB = 1 << 20


def llc_bytes() -> int:
    """Size of the CPU's largest (last-level) cache in bytes (32 MiB if unknown)."""
    best_level, best_size = -1, 0
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "size")) as f:
                text = f.read().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * scale
        if level > best_level or (level == best_level and size > best_size):
            best_level, best_size = level, size
    if best_size:
        return best_size
    try:
        size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        if size > 0:
            return size
    except (ValueError, OSError):
        pass
    return _DEFAULT_LLC


class CpuFloor:
    """The CPU streaming probe, sampled several times over a run.

    ``probe()`` times ``_C.stream_inplace`` over a float32 buffer of
    max(256 MiB, 4x LLC): each sample makes ``passes`` passes, each pass reads
    and writes 8 bytes per element. The run probes at its start, before each
    group of cases and at its end; ``summary()`` pools every sample.

    The floor is the *median* of all samples, taken throughout the run, to
    match the cases' medians under the same conditions. The best sample is
    reported beside it: on a shared machine it can be far higher (a quiet
    moment of the host's memory), so the gap between the two says how much
    the conditions varied.
    """

    METHOD = ("multi-threaded in-place streaming loop (fusedopt._C.stream_inplace, "
              "x *= 1.0), 8 bytes moved per float32 element per pass; median of all samples")

    def __init__(self, buffer_bytes: int | None = None, passes: int = 2):
        from fusedopt import _C

        self._stream = _C.stream_inplace
        if buffer_bytes is None:
            buffer_bytes = max(256 * _MIB, 4 * llc_bytes())
        self._buf = np.ones(buffer_bytes // 4, dtype=np.float32)
        self._stream(self._buf, 1.0, 1)  # first touch
        self.passes = passes
        self.bytes_per_sample = 8 * self._buf.size * passes
        self.probes = []  # {"label", "times_s", "gbps"} per call of probe()

    def probe(self, samples: int = 3, label: str = "") -> float:
        """Takes ``samples`` timed samples; returns their median bandwidth in GB/s."""
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            self._stream(self._buf, 1.0, self.passes)
            times.append(time.perf_counter() - start)
        gbps = self.bytes_per_sample / statistics.median(times) / 1e9
        self.probes.append({"label": label, "times_s": times, "gbps": gbps})
        return gbps

    def sample(self) -> float:
        """One pass over the buffer, timed: the bandwidth right now, in GB/s.

        Taken beside each timed sample of a case (timing.measure), so that
        the case can be compared with the memory of the same moment. Not
        pooled into the run's floor (``summary``), which keeps its meaning.
        """
        start = time.perf_counter()
        self._stream(self._buf, 1.0, 1)
        return 8 * self._buf.size / (time.perf_counter() - start) / 1e9

    def summary(self) -> dict:
        times = [t for p in self.probes for t in p["times_s"]]
        result = _summary(self.METHOD, self._buf.nbytes, self.bytes_per_sample, times)
        result["probes"] = self.probes
        return result


def measure_cuda_floor(*, buffer_bytes: int = 1 << 30, samples: int = 20) -> dict | None:
    """Device-to-device copy bandwidth with PyTorch (or CuPy), GB/s; None if no GPU."""
    from fusedopt.bench import kernel_cases
    from fusedopt.bench.cases import Skip

    try:
        name, xp = kernel_cases._cuda_array_module()
    except Skip:
        return None
    n = buffer_bytes // 4
    times = []
    if name == "torch":
        src = xp.ones(n, device="cuda", dtype=xp.float32)
        dst = xp.empty_like(src)
        for i in range(samples + 3):
            start, stop = kernel_cases._cuda_events(xp)
            start()
            dst.copy_(src)
            if i >= 3:
                times.append(stop())
            else:
                stop()
        device = xp.cuda.get_device_name()
    else:
        src = xp.ones(n, dtype=xp.float32)
        dst = xp.empty_like(src)
        for i in range(samples + 3):
            start, end = xp.cuda.Event(), xp.cuda.Event()
            start.record()
            xp.copyto(dst, src)
            end.record()
            end.synchronize()
            if i >= 3:
                times.append(xp.cuda.get_elapsed_time(start, end) / 1e3)
        device = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    result = _summary(f"device-to-device copy ({name}), bytes read plus written; median",
                      buffer_bytes, 2 * buffer_bytes, times)
    result["device"] = device
    return result


def _summary(method: str, buffer_bytes: int, bytes_per_sample: int, times: list) -> dict:
    """``gbps`` (the floor) is the median sample's bandwidth; ``gbps_best`` beside it."""
    return {
        "method": method,
        "buffer_bytes": buffer_bytes,
        "bytes_per_sample": bytes_per_sample,
        "times_s": times,
        "gbps": bytes_per_sample / statistics.median(times) / 1e9,
        "gbps_best": bytes_per_sample / min(times) / 1e9,
    }


class Evictor:
    """Streams through 4x the last-level cache so the next step starts cold."""

    def __init__(self, cache_bytes: int):
        from fusedopt import _C

        self.cache_bytes = cache_bytes
        self._stream = _C.stream_inplace
        self._buf = np.ones(max(4 * cache_bytes, 16 * _MIB) // 4, dtype=np.float32)

    def __call__(self) -> None:
        self._stream(self._buf, 1.0, 1)


class CudaEvictor:
    """Overwrites 4x the GPU's L2 cache (PyTorch or CuPy) so the next step starts cold."""

    def __init__(self):
        from fusedopt.bench import kernel_cases

        name, xp = kernel_cases._cuda_array_module()
        if name == "torch":
            l2 = getattr(xp.cuda.get_device_properties(0), "L2_cache_size", 64 * _MIB)
            self._buf = xp.empty(max(4 * l2, 16 * _MIB) // 4, device="cuda", dtype=xp.float32)
            self._sync = xp.cuda.synchronize
            self._fill = self._buf.fill_
        else:
            l2 = xp.cuda.Device().attributes.get("L2CacheSize", 64 * _MIB)
            self._buf = xp.empty(max(4 * l2, 16 * _MIB) // 4, dtype=xp.float32)
            self._sync = xp.cuda.Device().synchronize
            self._fill = self._buf.fill
        self.cache_bytes = l2

    def __call__(self) -> None:
        self._fill(1.0)
        self._sync()
