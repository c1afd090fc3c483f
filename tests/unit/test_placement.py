import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._placement import Node, chunk_key, place, place_many


def workers(n, prefix="w"):
    return [Node(f"{prefix}{i}") for i in range(n)]


@pytest.fixture(scope="module")
def million_keys():
    return np.random.default_rng(20261122).integers(0, 2**64 - 1, 1_000_000, dtype=np.uint64)


def test_balance_100_equal_workers(million_keys):
    owners = place_many(million_keys, workers(100))[:, 0]
    counts = np.bincount(owners, minlength=100)
    assert counts.max() / counts.mean() <= 1.1


@pytest.mark.parametrize("n", [10, 100])
def test_join_and_leave_move_about_one_nth(million_keys, n):
    nodes = workers(n)
    before = place_many(million_keys, nodes)[:, 0]
    # leave: only the departed worker's keys move
    left = place_many(million_keys, nodes[1:])[:, 0] + 1
    moved = before != left
    assert moved.mean() <= 1.2 / n
    assert np.all(before[moved] == 0)
    # join: only keys the newcomer wins move, all of them to it
    joined = place_many(million_keys, [*nodes, Node("newcomer")])[:, 0]
    moved = before != joined
    assert moved.mean() <= 1.2 / (n + 1)
    assert np.all(joined[moved] == n)


def test_weights_are_proportional(million_keys):
    nodes = [Node("small", 1.0), Node("medium", 2.0), Node("large", 5.0)]
    counts = np.bincount(place_many(million_keys[:200_000], nodes)[:, 0], minlength=3)
    share = counts / counts.sum()
    assert np.allclose(share, [1 / 8, 2 / 8, 5 / 8], atol=0.01)


@settings(max_examples=50)
@given(
    keys=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=50),
    n=st.integers(1, 12),
    replicas=st.integers(1, 5),
    weights=st.lists(st.floats(0.1, 10), min_size=12, max_size=12),
)
def test_vectorised_equals_scalar(keys, n, replicas, weights):
    nodes = [Node(f"node-{i}", weights[i]) for i in range(n)]
    table = place_many(np.array(keys, dtype=np.uint64), nodes, replicas)
    assert table.shape == (len(keys), min(replicas, n))
    for key, row in zip(keys, table, strict=True):
        chosen = place(key, nodes, replicas)
        assert [nodes[i].id for i in row] == [c.id for c in chosen]
        assert len({c.id for c in chosen}) == len(chosen)


@given(st.binary(min_size=1, max_size=40), st.integers(0, 2**40))
def test_chunk_keys_are_stable_and_distinct(file_id, chunk):
    assert chunk_key(file_id, chunk) == chunk_key(file_id, chunk)
    assert chunk_key(file_id, chunk) != chunk_key(file_id, chunk + 1)


def test_replicas_are_a_prefix_of_each_other():
    nodes = workers(20)
    for key in range(0, 2**64, 2**58):
        three = place(key, nodes, 3)
        assert place(key, nodes, 1) == three[:1]
        assert place(key, nodes, 50)[:3] == three


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: place(1, []), "at least one worker"),
        (lambda: place(1, workers(2), 0), "replicas"),
        (lambda: place(1, workers(2), True), "replicas"),
        (lambda: place(1, [Node("a"), Node("a")]), "unique"),
        (lambda: Node(""), "Node.id"),
        (lambda: Node("a", 0), "Node.weight"),
        (lambda: Node("a", float("inf")), "Node.weight"),
        (lambda: Node("a", float("nan")), "Node.weight"),
        (lambda: chunk_key(b"f", -1), "chunk index"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
