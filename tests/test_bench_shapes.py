"""The bench's named model shapes (--shapes ln402): the variables of a real
model, beside the uniform NxSIZE grids."""

import numpy as np
import pytest

from fusedopt.bench import cases


def test_ln402_is_the_dense_layer_norm_model():
    (shape,) = cases.parse_shapes("ln402")
    shapes = shape.tensor_shapes
    assert str(shape) == "ln402" and shape.n_tensors == len(shapes) == 402
    assert shapes[:4] == [(64, 64), (64,), (64,), (64,)] and shapes[-2:] == [(64, 10), (10,)]
    assert shape.params == 100 * (64 * 64 + 3 * 64) + 64 * 10 + 10
    assert shape.tensor_size == shape.params // 402
    # Beside uniform shapes in one list, which keep their 1-D tensors.
    mixed = cases.parse_shapes("300x256, LN402")
    assert mixed[0].tensor_shapes == [(256,)] * 300 and mixed[1] == shape


def test_model_shapes_reach_the_arrays():
    """The kernels implementation allocates the model's shapes, not N x mean."""
    from fusedopt.bench import kernel_cases

    case = cases.Case(cases.OPTIMIZERS["adam"], "float32", cases.Shape.of_model("ln402"),
                      cases.IMPLEMENTATIONS["kernels"])
    arrays = kernel_cases._numpy_arrays(case, 2, np.random.default_rng(0))
    assert [a.shape for a in arrays[0]] == case.shape.tensor_shapes
    assert sum(a.size for a in arrays[1]) == case.params


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="ln402"):
        cases.parse_shapes("ln999")
