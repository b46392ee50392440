"""What the benchmark measures: optimizers, shapes, implementations, cases.

A *case* is one implementation (``fusedopt``, ``keras``, ``tf-raw``, ...)
running one optimizer step of one optimizer (``adam``, ``sgd``, ...) over
``n_tensors`` tensors of ``tensor_size`` elements of one dtype. Its name is
``optimizer/dtype/NxS/implementation``, e.g. ``adam/float32/20x1M/keras-xla``.

Implementations register themselves with :func:`implementation`; each one is
a function ``setup(case, copies) -> Runner`` that allocates the tensors,
builds the step and returns it, or raises :class:`Skip` when what it needs is
missing (no GPU, no torch, an optimizer fusedopt does not have yet). Adding a
new case is one such function.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Sequence

import numpy as np


class Skip(Exception):
    """The case cannot run here (a missing baseline, device or feature)."""


# ----------------------------------------------------------------- optimizers


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer configuration and the memory traffic its step needs.

    Attributes:
      name: short name used in case names (``adam``).
      keras_class: the stock class in ``keras.optimizers`` (and ``fusedopt``).
      kwargs: constructor arguments, the same for every implementation.
      footprint_arrays: distinct arrays per parameter a step touches (Adam:
        p, g, m, v = 4); sizes the working set for cache decisions.
      traffic_arrays: array passes per parameter the step must make at the
        least (Adam: reads p, g, m, v and writes p, m, v = 7). Times the
        itemsize, this is the bytes per parameter behind the floor.
      description: one line for reports.
    """

    name: str
    keras_class: str
    kwargs: dict
    footprint_arrays: int
    traffic_arrays: int
    description: str

    def bytes_per_param(self, dtype: str) -> int:
        """Bytes the step must move per parameter (Adam float32: 28)."""
        return self.traffic_arrays * np.dtype(dtype).itemsize

    def footprint_per_param(self, dtype: str) -> int:
        """Bytes of distinct memory per parameter (Adam float32: 16)."""
        return self.footprint_arrays * np.dtype(dtype).itemsize


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec(
            "adam", "Adam", {"learning_rate": 1e-3}, 4, 7,
            "Adam: reads p, g, m, v; writes p, m, v",
        ),
        OptimizerSpec(
            "adamw", "AdamW", {"learning_rate": 1e-3, "weight_decay": 0.004}, 4, 7,
            "AdamW (decoupled decay fused into the same pass)",
        ),
        OptimizerSpec(
            "sgd", "SGD", {"learning_rate": 1e-2, "momentum": 0.9}, 3, 5,
            "SGD with momentum: reads p, g, m; writes p, m",
        ),
        OptimizerSpec(
            "adam-gclip", "Adam", {"learning_rate": 1e-3, "global_clipnorm": 1.0}, 4, 8,
            "Adam with global-norm clipping: one extra read of g for the norm",
        ),
        OptimizerSpec(
            "adam-skipnf", "Adam", {"learning_rate": 1e-3, "skip_nonfinite": True}, 4, 8,
            "Adam with skip_nonfinite: one extra read of g for the finite check",
        ),
        OptimizerSpec(
            "adam-gclip-skipnf", "Adam",
            {"learning_rate": 1e-3, "global_clipnorm": 1.0, "skip_nonfinite": True}, 4, 8,
            "Adam with global-norm clipping and skip_nonfinite: the norm's pass is the check",
        ),
    ]
}

# Arguments only fusedopt has; baselines skip the optimizers that use them.
FUSEDOPT_ONLY_ARGUMENTS = ("skip_nonfinite",)


def require_stock_arguments(spec: OptimizerSpec, baseline: str) -> None:
    """Raises Skip if `spec` uses an argument the baseline does not have."""
    extra = [k for k in FUSEDOPT_ONLY_ARGUMENTS if k in spec.kwargs]
    if extra:
        raise Skip(f"{baseline} has no {', '.join(extra)}")

# -------------------------------------------------------------------- shapes


def _dense_layer_norm_model() -> tuple[tuple[int, ...], ...]:
    """The variables of 100 x [Dense(64), LayerNormalization] on 64 inputs,
    then Dense(10): 402 variables, most of them small (the kernels are 64 x 64,
    the biases, scales and offsets 64 each)."""
    block = ((64, 64), (64,), (64,), (64,))
    return block * 100 + ((64, 10), (10,))


# Named shape lists of real models' variables, usable in --shapes beside NxSIZE.
MODEL_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "ln402": _dense_layer_norm_model(),
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """``n_tensors`` tensors of ``tensor_size`` elements each, or the
    variables of a model in ``MODEL_SHAPES`` (then ``tensor_size`` is their
    mean size)."""

    n_tensors: int
    tensor_size: int
    model: str | None = None

    @classmethod
    def of_model(cls, name: str) -> "Shape":
        shapes = MODEL_SHAPES[name]
        total = sum(int(np.prod(s)) for s in shapes)
        return cls(len(shapes), total // len(shapes), name)

    @property
    def tensor_shapes(self) -> list[tuple[int, ...]]:
        """The shape of every tensor."""
        if self.model is not None:
            return list(MODEL_SHAPES[self.model])
        return [(self.tensor_size,)] * self.n_tensors

    @property
    def params(self) -> int:
        if self.model is not None:
            return sum(int(np.prod(s)) for s in MODEL_SHAPES[self.model])
        return self.n_tensors * self.tensor_size

    def __str__(self) -> str:
        if self.model is not None:
            return self.model
        return f"{self.n_tensors}x{format_count(self.tensor_size)}"


def format_count(n: int) -> str:
    """1048576 -> '1M', 4096 -> '4K', 1000 -> '1000' (binary multiples only)."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def parse_count(text: str) -> int:
    """'1M' -> 1048576, '4k' -> 4096, '300' -> 300."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", text)
    if not match:
        raise ValueError(f"not a count: {text!r} (examples: 300, 4K, 1M)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(match.group(1)) * scale


def parse_shapes(text: str) -> list[Shape]:
    """'20x1M,300x256' -> [Shape(20, 1048576), Shape(300, 256)]; a name of
    MODEL_SHAPES ('ln402') -> that model's variables."""
    shapes = []
    for item in text.split(","):
        if not item.strip():
            continue
        if item.strip().lower() in MODEL_SHAPES:
            shapes.append(Shape.of_model(item.strip().lower()))
            continue
        parts = item.lower().split("x")
        if len(parts) != 2:
            raise ValueError(f"not a shape: {item!r} (expected NxSIZE, e.g. 20x1M, or one of "
                             f"{', '.join(MODEL_SHAPES)})")
        shape = Shape(parse_count(parts[0]), parse_count(parts[1]))
        if shape.n_tensors < 1 or shape.tensor_size < 1:
            raise ValueError(f"empty shape: {item!r}")
        shapes.append(shape)
    return shapes


# ----------------------------------------------------------- implementations


@dataclasses.dataclass
class Runner:
    """What an implementation's setup returns: ready-to-time step functions.

    Attributes:
      steps: one zero-argument callable per copy of the tensors; each performs
        one full optimizer step on its copy. The timer cycles through them.
      sync: called after each step before the clock stops (GPU work is
        asynchronous); None on the CPU, where the steps return when done.
      clock: optional ``clock() -> (start, stop)`` pair of callables measuring
        one step in seconds on the device (CUDA events); None = host clock.
      note: a short remark for the report (e.g. which path ran).
      after_warmup: optional callable returning a note, called once after the
        warm-up (e.g. to read ``opt.fused_paths`` once the step is traced).
      cleanup: optional callable run after the case, to release what outlives
        the runner (e.g. entries in TensorFlow's global gradient registry).
      steps_per_call: optimizer steps one call of a step function performs
        (``case.steps_per_call`` where the implementation loops, else 1); the
        timer divides each sample by it.
    """

    steps: list[Callable[[], object]]
    sync: Callable[[], None] | None = None
    clock: Callable[[], tuple[Callable[[], None], Callable[[], float]]] | None = None
    note: str = ""
    after_warmup: Callable[[], str] | None = None
    cleanup: Callable[[], None] | None = None
    steps_per_call: int = 1


@dataclasses.dataclass(frozen=True)
class Implementation:
    """A registered implementation.

    Attributes:
      name: short name used in case names and report columns.
      setup: ``setup(case, copies) -> Runner``; ``copies`` is how many copies of
        the tensors the timer would like (for rotating buffers); the runner may
        return fewer (at least one).
      device: "cpu" or "cuda"; selects the floor and the cache model.
      ours: True for fusedopt's own implementations, False for baselines.
      description: one line for reports and ``--list``.
      max_copies: the most copies worth building (tracing a TF step per copy is
        slow, so TF implementations use 1 and get cache eviction instead).
      default: run by default (False: only when asked for with ``--impls``).
    """

    name: str
    setup: Callable[["Case", int], Runner]
    device: str
    ours: bool
    description: str
    max_copies: int = 1
    default: bool = True


IMPLEMENTATIONS: dict[str, Implementation] = {}


def implementation(name, *, device="cpu", ours=False, description="", max_copies=1,
                   default=True):
    """Decorator registering ``setup(case, copies) -> Runner`` under ``name``."""

    def register(setup):
        IMPLEMENTATIONS[name] = Implementation(
            name, setup, device, ours, description or (setup.__doc__ or "").strip(),
            max_copies, default,
        )
        return setup

    return register


# ---------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One implementation on one (optimizer, dtype, shape).

    ``steps_per_call``: optimizer steps the implementation is asked to run in
    one timed call (``--steps-per-call``; TF cases loop inside their
    ``tf.function``, the others run one). Not part of the name.
    """

    optimizer: OptimizerSpec
    dtype: str
    shape: Shape
    impl: Implementation
    steps_per_call: int = 1

    @property
    def name(self) -> str:
        return f"{self.optimizer.name}/{self.dtype}/{self.shape}/{self.impl.name}"

    @property
    def group(self) -> str:
        """Cases in one group are the same work; speedups compare within it."""
        return f"{self.optimizer.name}/{self.dtype}/{self.shape}/{self.impl.device}"

    @property
    def params(self) -> int:
        return self.shape.params

    @property
    def bytes_per_param(self) -> int:
        return self.optimizer.bytes_per_param(self.dtype)

    @property
    def bytes_moved(self) -> int:
        """The least bytes one step must move through memory."""
        return self.params * self.bytes_per_param

    @property
    def footprint_bytes(self) -> int:
        """Distinct bytes one copy of the case's tensors occupies."""
        return self.params * self.optimizer.footprint_per_param(self.dtype)


def random_normal(rng: np.random.Generator, size: int | tuple[int, ...], dtype: str,
                  scale: float = 1.0):
    """Normal(0, scale²) samples of ``dtype`` (never zeros: zeros can run faster)."""
    native = dtype if dtype in ("float32", "float64") else "float32"
    out = rng.standard_normal(size, dtype=native)
    if scale != 1.0:
        out *= scale
    return out if native == dtype else out.astype(dtype)


def make_cases(
    combos: Sequence[tuple[str, str]],
    shapes: Sequence[Shape],
    impls: Sequence[str],
) -> list[Case]:
    """Every (optimizer, dtype) in ``combos`` × shape × implementation."""
    cases = []
    for opt_name, dtype in combos:
        for shape in shapes:
            for impl_name in impls:
                cases.append(Case(OPTIMIZERS[opt_name], dtype, shape,
                                  IMPLEMENTATIONS[impl_name]))
    return cases


def matches(name: str, patterns: Sequence[str]) -> bool:
    """True if ``name`` matches any pattern: a glob if it has ``*?[``, else a substring."""
    if not patterns:
        return True
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatchcase(name, pattern):
                return True
        elif pattern in name:
            return True
    return False
