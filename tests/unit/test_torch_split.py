"""How :class:`shoal.torch.ShoalIterableDataset` splits an epoch: every file exactly once over
all ranks and DataLoader workers, shares balanced to one file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.torch._datasets import shard


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 500),
    world_size=st.integers(1, 9),
    num_workers=st.integers(1, 9),
)
def test_every_position_once_over_ranks_and_workers(n, world_size, num_workers):
    per_rank = []
    seen: list[int] = []
    for rank in range(world_size):
        shares = [shard(n, rank, world_size, w, num_workers) for w in range(num_workers)]
        for share in shares:
            assert list(share) == sorted(share)
            assert all(0 <= p < n for p in share)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        per_rank.append(sum(map(len, shares)))
        seen += [p for share in shares for p in share]
    assert sorted(seen) == list(range(n))
    assert max(per_rank) - min(per_rank) <= 1


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 200), world_size=st.integers(1, 6), data=st.data())
def test_a_rank_gets_what_it_would_with_one_worker(n, world_size, data):
    # Adding DataLoader workers splits a rank's share; it never moves files between ranks.
    rank = data.draw(st.integers(0, world_size - 1))
    num_workers = data.draw(st.integers(1, 6))
    alone = set(shard(n, rank, world_size, 0, 1))
    split = [p for w in range(num_workers) for p in shard(n, rank, world_size, w, num_workers)]
    assert sorted(split) == sorted(alone)


@pytest.mark.parametrize(
    "args",
    [
        (-1, 0, 1, 0, 1),
        (10, 1, 1, 0, 1),
        (10, 0, 0, 0, 1),
        (10, 0, 1, 2, 2),
        (10, 0, 1, 0, 0),
        (10, -1, 2, 0, 1),
        (10, 0, 2, True, 1),
        (10.0, 0, 1, 0, 1),
    ],
)
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError):
        shard(*args)
