"""Batch planning, pure bookkeeping: every pair is scored once and put back in order; batches keep the budget, row
cap and padding bound; packed rows keep their capacity; shared contexts only where they save enough."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cme_reward.engine.planning import pack_batches, pack_rows, plan_pairs

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


token_ids = st.lists(st.integers(0, 3), min_size=1, max_size=4)


@given(
    st.lists(st.tuples(token_ids, st.lists(st.integers(0, 3), max_size=3)), max_size=30),
    st.booleans(),
    st.booleans(),
    st.integers(0, 6),
)
def test_plan_pairs_scores_each_pair_once(pairs, deduplicate, prefix_sharing, min_shared):
    plan = plan_pairs(pairs, deduplicate=deduplicate, prefix_sharing=prefix_sharing, min_shared_tokens=min_shared)
    assert [plan.pairs[s] for s in plan.slot] == [(list(c), list(r)) for c, r in pairs]  # input order restored
    if deduplicate:
        assert len(plan.pairs) == len({(tuple(c), tuple(r)) for c, r in pairs})
    else:
        assert plan.slot == list(range(len(pairs)))
    placed = [i for g in plan.groups for i in g] + plan.singles
    assert sorted(placed) == list(range(len(plan.pairs)))  # every unique pair in exactly one place
    singles = [sum(map(len, plan.pairs[i])) for i in plan.singles]
    assert singles == sorted(singles, reverse=True)  # longest first
    assert [len(plan.pairs[g[0]][0]) for g in plan.groups] == sorted(
        (len(plan.pairs[g[0]][0]) for g in plan.groups), reverse=True
    )
    for g in plan.groups:
        assert prefix_sharing and len(g) > 1
        assert len({tuple(plan.pairs[i][0]) for i in g}) == 1 and all(plan.pairs[i][1] for i in g)
        assert (len(g) - 1) * len(plan.pairs[g[0]][0]) >= min_shared  # sharing saves enough tokens


def test_plan_pairs_groups_a_grpo_batch():
    context = [1, 2, 3, 4]
    pairs = [(context, [5]), (context, [6, 7]), (context, [5]), ([9], [8]), (context, [])]
    plan = plan_pairs(pairs, deduplicate=True, prefix_sharing=True, min_shared_tokens=4)
    assert plan.pairs == [(context, [5]), (context, [6, 7]), ([9], [8]), (context, [])]
    assert plan.slot == [0, 1, 0, 2, 3]
    assert plan.groups == [[0, 1]]  # the empty response is not scored through the cache
    assert plan.singles == [3, 2]  # longest pair first
    assert plan_pairs(pairs, deduplicate=True, prefix_sharing=True, min_shared_tokens=5).groups == []
