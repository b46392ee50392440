"""What machine and which software versions a benchmark ran on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from fusedopt.bench.floor import llc_bytes


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    """CPU model, core counts, memory, last-level cache, OS and current load."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_bytes": _memory_bytes(),
        "llc_bytes": llc_bytes(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def gpu_info() -> list[dict]:
    """Visible CUDA GPUs, through PyTorch if it is installed (no import otherwise)."""
    from fusedopt.bench import kernel_cases
    from fusedopt.bench.cases import Skip

    try:
        torch = kernel_cases._torch_cuda()
    except Skip:
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"name": props.name, "memory_bytes": props.total_memory,
                     "capability": f"{props.major}.{props.minor}"})
    return gpus


def versions() -> dict:
    """Python and the versions of every package the benchmark may use."""
    found = {"python": sys.version.split()[0]}
    for package in ("fusedopt", "numpy", "tensorflow", "tensorflow-cpu", "keras", "jax",
                    "jaxlib", "optax", "torch", "cupy", "rich", "matplotlib"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    # The modules actually imported, in case the metadata is ambiguous.
    for module in ("tensorflow", "keras", "numpy"):
        mod = sys.modules.get(module)
        if mod is not None and getattr(mod, "__version__", None):
            found[module] = mod.__version__
    return found
