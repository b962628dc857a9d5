"""Value rendering: exact repr for ordinary values, the truncation rule, bounded cost."""

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from cwm.trace.values import CHANGED, REWRITTEN, SAME, ValueRenderer

atoms = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=20), st.binary(max_size=8))
values = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.tuples(inner), st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.integers(), st.text(max_size=5)), inner, max_size=5),
        st.frozensets(st.integers(), max_size=5), st.sets(st.text(max_size=3), max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values, st.integers(1, 120))
def test_text_is_the_exact_repr_or_its_prefix_and_an_ellipsis(value, limit):
    text, truncated = ValueRenderer(limit).render(value)
    full = repr(value)
    if len(full) <= limit:
        assert (text, truncated) == (full, False)
    else:
        assert (text, truncated) == (full[:limit] + "...", True)


def test_cost_per_value_does_not_grow_with_its_size():
    r = ValueRenderer(200)
    small, big = list(range(1000)), list(range(1_000_000))
    nested = [[i] * 3 for i in range(200_000)]
    huge_str = "ab'\"" * 500_000

    def cost(v, n=20):
        start = time.perf_counter()
        for _ in range(n):
            r.render(v)
        return time.perf_counter() - start

    assert cost(big) < 20 * cost(small) + 0.01  # 1000x larger, nowhere near 1000x the time
    assert r.render(nested)[0].startswith("[[0, 0, 0], [1, 1, 1]")
    assert cost(huge_str) < 0.05 and r.render(huge_str)[0] == repr(huge_str)[:200] + "..."
    assert r.render(10**20000)[0] == "1" + "0" * 199 + "..."  # past int's own 4300-digit repr limit


scalars = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=6)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(scalars, max_size=20), st.lists(scalars, max_size=5), st.integers(5, 120))
def test_a_list_or_dict_that_grew_extends_its_text_exactly(head, tail, limit):
    r = ValueRenderer(limit)
    for value, more in ((list(head), tail), (dict(enumerate(head)), {len(head) + k: v for k, v in enumerate(tail)})):
        seen = r.track(value, None)
        assert seen.how == CHANGED and seen.text == r.render(value)[0]
        value.update(more) if type(value) is dict else value.extend(more)
        now = r.track(value, seen)
        text, truncated = r.render(value)
        assert now.text == text and now.nbytes == len(json.dumps(text))
        # a grown value always changed: written in full, as CHANGED (new text) or REWRITTEN (same cut text)
        assert now.how == (SAME if not more else CHANGED if text != seen.text else REWRITTEN)
        assert truncated or now.how != REWRITTEN
