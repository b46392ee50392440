"""What this build of fusedopt contains."""

from __future__ import annotations

from fusedopt import _build_config, _C


def build_info() -> dict:
    """Returns what the installed build contains.

    Keys:
      cuda: True if the CUDA kernels were compiled in.
      cuda_architectures: the CUDA architectures compiled (CMake syntax), or None.
      tensorflow: the TensorFlow version the ops were built against, or None.
      tf_ops_loaded: whether the TF op library loaded in this process (None if
        TensorFlow has not been asked for it yet).
      xla_kernels: whether the XLA kernels (FusedoptAdam inside jit_compile=True
        steps) loaded with it (None before the op library was asked for).
      cpu_isa: the instruction set the CPU kernels use on this machine.
      cpu_isa_compiled / cpu_isa_supported: the instruction sets compiled in,
        and those of them this CPU supports.
      num_threads: threads of the NumPy-kernel thread pool.
    """
    info = dict(_C.build_info())
    info["tensorflow"] = _build_config.TF_VERSION
    from fusedopt import _ops

    info["tf_ops_loaded"] = _ops.load_state()
    info["xla_kernels"] = None if info["tf_ops_loaded"] is None else _ops.xla_kernels()
    return info
