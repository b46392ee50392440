"""What Grappler makes of the stock `gradient * learning_rate` in a traced graph.

In a `tf.function` (model.fit without run_eagerly), Grappler rewrites the
stock update before it runs, and two of its rewrites change how
`gradient * lr` rounds when the gradient is itself a product:

- constant folding turns a division by a constant, `x / c`, into
  `Reciprocal(c) * x` (Keras divides by `gradient_accumulation_steps` and by
  `loss_scale_factor` that way);
- the arithmetic optimizer's MinimizeBroadcasts stage takes a tree of `Mul`
  nodes whose inner nodes have one consumer each, sorts its inputs by size
  (stable) and rebuilds the tree so that the small ones are multiplied first:
  `(g * scale) * lr` (`global_clipnorm`) runs as `g * (scale * lr)`.

A fused kernel that computes `gradient * lr` from the already-scaled gradient
would round differently. `product_of(grad)` replays both rewrites on the
traced graph (the same rules, from tensorflow/core/grappler/optimizers) and
returns the tensor and the scalar to multiply instead: `(g, scale * lr)` for
the example above. Eagerly, and where Grappler's options are off, nothing is
rewritten and neither is the product here.
"""

from __future__ import annotations

import math

import tensorflow as tf

from fusedopt.optimizers.base import _in_xla_context


class Unsupported(Exception):
    """Grappler would compute the product in a form one kernel input cannot
    express (the message says why)."""


class _Leaf:
    """A group input: a tensor, the reciprocal of a constant tensor, or (with
    tensor None) the learning rate, a scalar supplied when building."""

    def __init__(self, tensor=None, reciprocal=False):
        self.tensor = tensor
        self.reciprocal = reciprocal
        if tensor is None:
            self.rank, self.size, self.signature = 0, 1, ()
            return
        shape = tensor.shape
        self.rank = shape.rank
        self.size = math.prod(shape.as_list()) if shape.is_fully_defined() else None
        self.signature = tuple(shape.as_list()) if shape.rank is not None else None

    def key(self):
        if self.tensor is None:
            return ("lr",)
        if self.reciprocal:
            value = tf.get_static_value(self.tensor)
            return ("1/", self.tensor.dtype.name, value.shape, value.tobytes())
        return ("t", self.tensor.name)

    def build(self, lr):
        if self.tensor is None:
            return lr
        if self.reciprocal:
            return tf.math.reciprocal(self.tensor)
        return self.tensor


def _rewrites_enabled():
    """(constant folding, arithmetic optimization) as the runtime will run them."""
    options = tf.config.optimizer.get_experimental_options()
    if options.get("disable_meta_optimizer", False):
        return False, False
    return (options.get("constant_folding", True) is not False,
            options.get("arithmetic_optimization", True) is not False)


_IDENTITIES = ("Identity", "IdentityN")


def _through_identities(tensor):
    """The tensor an Identity/IdentityN chain forwards (Grappler's pruning
    removes them before the arithmetic optimizer runs)."""
    while tensor.op.type in _IDENTITIES and not tensor.op.control_inputs:
        tensor = tensor.op.inputs[tensor.value_index]
    return tensor


def _consumers(tensor):
    """How many ops read `tensor`, looking through Identity/IdentityN."""
    count = 0
    seen = set()
    for op in tensor.consumers():
        if op.name in seen:
            continue
        seen.add(op.name)
        for j, t in enumerate(op.inputs):
            if t.name != tensor.name:
                continue
            if op.type in _IDENTITIES:
                count += _consumers(op.outputs[j])
            else:
                count += 1
    return count


def _operands(tensor, consumers, device, folding):
    """The operands of `tensor`'s op as a member of the product group, or None
    when Grappler keeps it as a group input.

    `consumers`: how many consumers the op has in the stock graph (the root's
    direct input is consumed only by the stock `gradient * lr`, which does not
    exist here yet: 0; deeper nodes: 1).
    """
    op = tensor.op
    if op.type not in ("Mul", "RealDiv") or op.device != device:
        return None
    if op.control_inputs or op._control_outputs:
        return None
    if _consumers(tensor) != consumers or not tensor.shape.is_fully_defined():
        return None
    if op.type == "Mul":
        return [(t, False) for t in op.inputs]
    # RealDiv: only by a constant, which constant folding first turns into
    # Mul(Reciprocal(c), x).
    x, c = op.inputs
    if not folding or c.op.type != "Const" or not c.dtype.is_floating:
        return None
    return [(c, True), (x, False)]


def _collect(tensor, reciprocal, consumers, device, folding, leaves):
    """Appends the group inputs under `tensor` to `leaves` in Grappler's
    (depth-first, left to right) order; returns the original tree."""
    tensor = _through_identities(tensor)
    operands = None if reciprocal else _operands(tensor, consumers, device, folding)
    if operands is None:
        leaf = _Leaf(tensor, reciprocal)
        leaves.append(leaf)
        return leaf
    return tuple(_collect(t, r, 1, device, folding, leaves) for t, r in operands)


def _smaller(a, b):
    """CompareSymbolicallyShapedTensorSizes for fully defined shapes; a rebuilt
    node carries an empty shape (a scalar: size 1)."""
    size_a = a.size if isinstance(a, _Leaf) else 1
    size_b = b.size if isinstance(b, _Leaf) else 1
    if size_a is None or size_b is None:
        return False
    return size_a < size_b


def _rebuild(leaves):
    """MinimizeBroadcasts::RewriteOptimizedNodesGroup on `leaves`."""
    ops = sorted(leaves, key=lambda leaf: leaf.size if leaf.size is not None else math.inf)
    # sorted() is stable and compares sizes with <, like std::stable_sort with
    # CompareSymbolicallyShapedTensorSizes (unknown sizes never occur here).
    leftover = ops.pop() if len(ops) % 2 else None
    while True:
        lhs, rhs = ops.pop(0), ops.pop(0)
        node = (lhs, rhs)
        if len(ops) >= 2 and _smaller(ops[0], ops[1]):
            ops.insert(0, node)
        else:
            ops.append(node)
        if len(ops) <= 1:
            break
    tree = ops[0]
    if leftover is not None:
        tree = (tree, leftover)
    return tree


def _leaves_of(tree):
    if isinstance(tree, _Leaf):
        return [tree]
    return _leaves_of(tree[0]) + _leaves_of(tree[1])


def _same(a, b):
    """The same computation (Mul is commutative, so operand order is free)."""
    if isinstance(a, _Leaf) or isinstance(b, _Leaf):
        return a is b
    return ((_same(a[0], b[0]) and _same(a[1], b[1]))
            or (_same(a[0], b[1]) and _same(a[1], b[0])))


class Product:
    """`tensor * scalar`, with the scalar a tree of scalar leaves."""

    def __init__(self, tensor, scalar_tree, includes_scales=False):
        self.tensor = tensor
        self._tree = scalar_tree
        # Whether the scalar contains the `scales` given to product_of.
        self.includes_scales = includes_scales

    def key(self):
        """Equal for products whose scalars are computed identically."""
        def walk(tree):
            if isinstance(tree, _Leaf):
                return tree.key()
            return (walk(tree[0]), walk(tree[1]))
        return walk(self._tree)

    def scalar(self, lr):
        """Builds the scalar in the graph, in Grappler's order, with `lr` for
        the learning rate."""
        def walk(tree):
            if isinstance(tree, _Leaf):
                return tree.build(lr)
            return tf.multiply(walk(tree[0]), walk(tree[1]))
        return walk(self._tree)


def as_written(grad):
    """The Product `(grad, lr)`: for a gradient Grappler does not rewrite."""
    return Product(grad, _Leaf())


def product_of(grad, scales=()):
    """How a traced graph computes the stock `grad * scales... * lr` (see the
    module doc).

    scales: scalar tensors the stock code multiplies the gradient by before
    the update (Keras' global clipnorm: `grad * scale`, where the stock code
    also reads `grad` for the norm, so `grad` itself is never absorbed).

    Returns a Product: `tensor * scalar(lr)` rounds exactly as the stock
    graph's product after Grappler. When nothing is rewritten (eagerly, with
    Grappler's rewrites off, or where the rules do not apply) the Product is
    `(grad, lr)` and `includes_scales` is False: the caller applies the scales
    itself, in the stock order. Raises Unsupported when the rewritten product
    is not one tensor times a scalar.
    """
    lr_leaf = _Leaf()
    unchanged = Product(grad, lr_leaf)
    if tf.executing_eagerly() or isinstance(grad, tf.IndexedSlices):
        return unchanged
    if _in_xla_context():  # Grappler leaves XLA clusters to XLA
        return unchanged
    folding, arithmetic = _rewrites_enabled()
    if not arithmetic or not grad.shape.is_fully_defined():
        return unchanged
    leaves = []
    if scales:
        g_tree = _Leaf(grad)
        leaves.append(g_tree)
        for scale in scales:
            leaf = _Leaf(scale)
            leaves.append(leaf)
            g_tree = (g_tree, leaf)
    else:
        device = _through_identities(grad).op.device
        g_tree = _collect(grad, False, 0, device, folding, leaves)
        if isinstance(g_tree, _Leaf):
            return unchanged  # nothing absorbed: Mul(grad, lr) as written
    leaves.append(lr_leaf)
    original = (g_tree, lr_leaf)
    if len({leaf.signature for leaf in leaves}) <= 1:
        return unchanged  # all one shape: Grappler leaves the group alone
    tree = _rebuild(leaves)
    if _same(tree, original):
        return unchanged
    shape = tuple(grad.shape.as_list())
    for big, small in ((tree[0], tree[1]), (tree[1], tree[0])):
        if (isinstance(big, _Leaf) and big.tensor is not None and not big.reciprocal
                and big.signature == shape
                and all(leaf.rank == 0 for leaf in _leaves_of(small))):
            return Product(big.tensor, small, includes_scales=bool(scales))
    raise Unsupported(
        "the gradient is a product that Grappler reorders with the learning rate "
        "into a form the fused op does not take"
    )
