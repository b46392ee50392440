"""fusedopt-bench: fused optimizer steps against stock baselines and the memory floor.

Run ``fusedopt-bench --help`` (or ``python -m fusedopt.bench``). Modules:

- ``cases``: optimizers, shapes, the implementation registry and case names;
- ``tf_cases``: whole ``opt.apply`` steps in TensorFlow (fusedopt, Keras, XLA,
  per-variable ``ResourceApply*``);
- ``kernel_cases``: ``fusedopt.kernels`` on NumPy and CUDA arrays, PyTorch;
- ``floor``: the streaming-bandwidth floor and cache eviction;
- ``timing``: warm-up, samples, rotating buffers;
- ``report`` and ``plot``: statistics, the table, JSON, CSV and PNG;
- ``fit``: ``--fit``, real ``model.fit`` with fusedopt against the stock
  optimizer (per-step times, the optimizer's share, the weights compared);
- ``args``: the argument checks of the command lines;
- ``cli``: the command line.
"""
