"""The per-array checks of fusedopt.kernels on calls with many arrays.

test_bad_input.py checks each refusal on three arrays per list. The checks
have fast paths that only calls with many arrays take (the overlap check: a
hash set of addresses where every array owns its memory, a radix sort of the
addresses from 64 arrays on, std::sort below), so here: random layouts of
hundreds of views inside one buffer, compared with a brute-force reference
of the rule (no array that is written may share a byte with any other array
of the call; arrays that are only read may); repeated arrays among many that
own their memory; shapes of more dimensions than a record holds inline.
"""

import re

import numpy as np
import pytest

from fusedopt import kernels

LISTS = ("params", "grads", "m", "v")
WRITTEN = {"params", "m", "v"}
SHARE = re.compile(r"(\w+)\[(\d+)\] and (\w+)\[(\d+)\] share memory")


def byte_range(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def reference_clashes(call):
    """Every pair {(list, index), (list, index)} that breaks the rule, by
    comparing every pair of byte ranges."""
    spans = [(name, i) + byte_range(a) for name in LISTS for i, a in enumerate(call[name])
             if a.nbytes > 0]
    begin = np.array([s[2] for s in spans])
    end = np.array([s[3] for s in spans])
    written = np.array([s[0] in WRITTEN for s in spans])
    share = (begin[:, None] < end[None, :]) & (begin[None, :] < end[:, None])
    bad = np.triu(share & (written[:, None] | written[None, :]), k=1)
    return {frozenset([spans[x][:2], spans[y][:2]]) for x, y in zip(*np.nonzero(bad))}


def views_call(rng, buffer, count, overlaps):
    """adam arguments: 4 lists of `count` views (sizes 0 to 40, the same in
    every list) at random places in `buffer`, apart, then up to `overlaps` of
    them moved onto another array."""
    sizes = np.tile(rng.integers(0, 41, size=count), 4)
    order = rng.permutation(sizes.size)  # the views' order in the buffer
    room = sizes[order] + rng.integers(0, 3, size=sizes.size)
    # Spread over the whole buffer (a wide address range: more radix digits).
    spread = max(1, (buffer.size - 64) // int(room.sum() + 1))
    starts = np.empty(sizes.size, np.int64)
    starts[order] = (np.cumsum(room) - room) * spread
    views = [buffer[s:s + n] for s, n in zip(starts, sizes)]
    for _ in range(overlaps):
        x, y = (int(k) for k in rng.choice(sizes.size, size=2, replace=False))
        if sizes[x] == 0 or sizes[y] == 0:
            continue
        start = int(starts[y]) + int(rng.integers(-int(sizes[x]) + 1, int(sizes[y])))
        if 0 <= start and start + sizes[x] <= buffer.size:
            views[x] = buffer[start:start + sizes[x]]
    return {name: views[k * count:(k + 1) * count] for k, name in enumerate(LISTS)}


@pytest.mark.parametrize("seed", range(40))
def test_overlap_check_matches_the_rule_on_many_views(seed):
    rng = np.random.default_rng(seed)
    # 4M float32 (16 MiB, mostly never touched): addresses spread over 24 bits.
    buffer = np.empty(1 << 22, np.float32)
    count = int(rng.integers(16, 120))  # 64 to 480 arrays in all
    call = views_call(rng, buffer, count, overlaps=int(rng.integers(0, 3)))
    for a in (x for name in LISTS for x in call[name]):
        a[...] = rng.uniform(0.5, 1.5, a.shape)
    clashes = reference_clashes(call)
    before = buffer.copy() if clashes else None
    if clashes:
        with pytest.raises(ValueError, match="share memory") as err:
            kernels.adam(**call, lr=1e-3, step=1)
        named = SHARE.search(str(err.value))
        pair = frozenset([(named.group(1), int(named.group(2))),
                          (named.group(3), int(named.group(4)))])
        assert pair in clashes, (str(err.value), clashes)
        assert buffer.tobytes() == before.tobytes()
    else:
        old = [np.array(a) for a in call["params"]]
        kernels.adam(**call, lr=1e-3, step=1)
        changed = [not np.array_equal(a, b) for a, b in zip(call["params"], old) if a.size]
        assert all(changed)


def owned_call(rng, count):
    def arrays(low=-1.0):
        return [rng.uniform(low, 1.0, int(n)).astype(np.float32)
                for n in rng.integers(1, 30, size=count)]

    p = arrays()
    shapes = [a.shape for a in p]
    g, m = ([rng.uniform(-1, 1, s).astype(np.float32) for s in shapes] for _ in range(2))
    v = [rng.uniform(0, 1, s).astype(np.float32) for s in shapes]
    return dict(params=p, grads=g, m=m, v=v)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("where", ["params", "m", "v", "grads"])
def test_a_written_array_twice_among_many_is_refused(seed, where):
    """Arrays that own their memory (np.empty & co.) take the hash-set path."""
    rng = np.random.default_rng(seed)
    call = owned_call(rng, count=int(rng.integers(50, 200)))
    source = str(rng.choice(sorted(WRITTEN)))
    i = int(rng.integers(len(call[source])))
    j = int(rng.integers(len(call[where])))
    if (source, i) == (where, j):
        j = (j + 1) % len(call[where])
    alias = call[source][i]
    for name in LISTS:  # index j takes alias's shape: only the aliasing is wrong
        if (name, j) != (source, i):
            call[name][j] = np.zeros_like(alias)
    call[where][j] = alias
    before = [np.array(a) for name in LISTS for a in call[name]]
    with pytest.raises(ValueError, match="share memory") as err:
        kernels.adam(**call, lr=1e-3, step=1)
    named = SHARE.search(str(err.value))
    pair = {(named.group(1), int(named.group(2))), (named.group(3), int(named.group(4)))}
    assert pair == {(source, i), (where, j)}, str(err.value)
    after = [a for name in LISTS for a in call[name]]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(before, after))


def test_a_gradient_shared_by_many_parameters_is_valid():
    """Arrays that are only read may repeat, on the hash-set path too: the
    result is that of separate copies."""
    rng = np.random.default_rng(3)
    call = owned_call(rng, count=150)
    shared = rng.uniform(-1, 1, 7).astype(np.float32)
    for k in range(0, 150, 2):
        for name in ("params", "m", "v"):
            call[name][k] = rng.uniform(0, 1, 7).astype(np.float32)
        call["grads"][k] = shared
    copies = {name: [np.array(a) for a in call[name]] for name in LISTS}
    kernels.adam(**copies, lr=1e-3, step=1)
    kernels.adam(**call, lr=1e-3, step=1)
    for name in ("params", "m", "v"):
        assert all(a.tobytes() == b.tobytes() for a, b in zip(call[name], copies[name]))


def test_a_view_of_an_owned_array_among_many_is_refused():
    """One array that does not own its memory sends the call to the sort."""
    rng = np.random.default_rng(4)
    call = owned_call(rng, count=100)
    for name in LISTS:
        call[name][10] = np.ones(20, np.float32)
        call[name][60] = np.ones(5, np.float32)
    call["v"][60] = call["params"][10][3:8]
    with pytest.raises(ValueError, match=r"(v\[60\] and params\[10\]|params\[10\] and v\[60\])"):
        kernels.adam(**call, lr=1e-3, step=1)


def test_shapes_of_many_dimensions():
    """A record holds four dimensions inline, more on the heap: both compare."""
    rng = np.random.default_rng(5)
    shapes = [(2, 1, 3, 1, 2, 2), (3, 2, 1, 1, 1), (4, 3), (2, 2, 2, 2)]
    flat = [[rng.uniform(0.1, 1, s).astype(np.float32) for s in shapes] for _ in range(4)]
    shaped = [[np.array(a) for a in lst] for lst in flat]
    kernels.adam(*[[a.reshape(-1) for a in lst] for lst in flat], lr=1e-2, step=2)
    kernels.adam(*shaped, lr=1e-2, step=2)
    for lst_flat, lst_shaped in zip(flat, shaped):
        for a, b in zip(lst_flat, lst_shaped):
            assert a.tobytes() == b.tobytes()
    bad = [[np.array(a) for a in lst] for lst in shaped]
    bad[3][0] = bad[3][0].reshape(2, 1, 3, 1, 4, 1)
    with pytest.raises(ValueError, match=r"v\[0\] has shape \(2, 1, 3, 1, 4, 1\) but params"
                                         r"\[0\] has shape \(2, 1, 3, 1, 2, 2\)"):
        kernels.adam(*bad, lr=1e-2, step=2)


def test_float32_with_metadata_is_float32():
    """The dtype is read by type number and byte order, not by identity with
    NumPy's float32 object."""
    dtype = np.dtype(np.float32, metadata={"unit": "m"})
    p = [np.ones(5, dtype)]
    g, m, v = [np.full(5, 0.5, dtype)], [np.zeros(5, dtype)], [np.zeros(5, dtype)]
    ref = [np.ones(5, np.float32)]
    kernels.adam(ref, [np.full(5, 0.5, np.float32)], [np.zeros(5, np.float32)],
                 [np.zeros(5, np.float32)], lr=0.1, step=1)
    kernels.adam(p, g, m, v, lr=0.1, step=1)
    assert p[0].tobytes() == ref[0].tobytes()
    with pytest.raises(TypeError, match=r"grads\[0\].*float32 or float64"):
        kernels.adam(p, [g[0].astype(dtype.newbyteorder())], m, v, lr=0.1, step=1)
