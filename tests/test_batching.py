"""The batch planners: every item lands exactly once, in order, within the budget, padding and capacity bounds."""

import math

from hypothesis import given
from hypothesis import strategies as st

from cme_reward.batching import pack_batches, pack_rows

lengths_st = st.lists(st.integers(1, 300), min_size=0, max_size=60).map(lambda xs: sorted(xs, reverse=True))


@given(
    lengths_st,
    st.integers(1, 2000),
    st.sampled_from([0.0, 0.25, 1.0, math.inf]),
    st.integers(0, 100),
    st.one_of(st.none(), st.integers(1, 8)),
)
def test_pack_batches_bounds(lengths, budget, max_padding, extra, max_rows):
    order = list(range(len(lengths)))
    batches = pack_batches(order, lengths.__getitem__, budget, max_padding, max_rows=max_rows, extra=extra)
    assert [i for b in batches for i in b] == order  # each item once, order kept
    for b in batches:
        width, real = lengths[b[0]], sum(lengths[i] for i in b)
        assert all(lengths[i] <= width for i in b)  # the first (longest) item sets the width
        if len(b) > 1:
            assert len(b) * (width + extra) <= budget
            assert len(b) * width <= (1 + max_padding) * real
            assert max_rows is None or len(b) <= max_rows
        if max_padding == 0.0:
            assert all(lengths[i] == width for i in b)  # no padding at all


def test_pack_batches_fills_up_to_the_budget():
    assert pack_batches([0, 1, 2, 3], [10, 10, 10, 10].__getitem__, 25, math.inf) == [[0, 1], [2, 3]]
    assert pack_batches([0, 1, 2], [10, 9, 8].__getitem__, 100, 0.0) == [[0], [1], [2]]
    assert pack_batches([0, 1], [50, 40].__getitem__, 10, math.inf) == [[0], [1]]  # too long: alone, not dropped


@given(lengths_st, st.integers(2, 400))
def test_pack_rows_capacity(lengths, capacity):
    order = list(range(len(lengths)))
    rows = pack_rows(order, lengths.__getitem__, capacity)
    assert sorted(i for r in rows for i in r) == order
    for r in rows:
        assert len(r) == 1 or sum(lengths[i] for i in r) <= capacity


def test_pack_rows_first_fit():
    assert pack_rows([0, 1, 2, 3], [6, 5, 4, 1].__getitem__, 10) == [[0, 2], [1, 3]]
