"""The per-request event's numbers: its fast rounding gives exactly what ``round`` gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.domain.context import Attempt, Priority, RequestContext
from bastion.observability.logging import _rounded, completion_fields


@settings(max_examples=2000)
@given(st.floats(min_value=0.0, max_value=4e9, allow_nan=False))
def test_six_decimals_are_round_six(x: float) -> None:
    assert _rounded(x, 1_000_000) == round(x, 6)


@settings(max_examples=2000)
@given(st.floats(min_value=0.0, max_value=1e7, allow_nan=False))
def test_eight_decimals_are_round_eight(x: float) -> None:
    assert _rounded(x, 100_000_000) == round(x, 8)


@given(st.floats(min_value=-1e20, max_value=1e20, allow_nan=False))
def test_values_out_of_the_fast_range_fall_back_to_round(x: float) -> None:
    assert _rounded(x, 1_000_000) == round(x, 6)


@given(st.lists(st.tuples(st.floats(0, 120), st.floats(0, 120), st.booleans()), max_size=4),
       st.floats(0, 300), st.sampled_from(list(Priority)))
def test_timings_are_milliseconds_to_two_decimals(attempts: list[tuple[float, float, bool]],
                                                  elapsed: float, priority: Priority) -> None:
    ctx = RequestContext.create(budget_s=5, priority=priority)
    for n, (start, duration, called) in enumerate(attempts, 1):
        ctx.attempts.append(Attempt("p/m", n, "ok", duration, called=called, start_s=start))
    fields = completion_fields(ctx, method="POST", path="/v1/x", status=200, error=None,
                               elapsed_s=elapsed)
    assert fields["latency_ms"] == round(elapsed * 1000, 2) or \
        abs(fields["latency_ms"] - elapsed * 1000) <= 0.005 + 1e-9
    assert fields["calls"] == sum(called for _, _, called in attempts)
    assert fields["priority"] == priority.value and type(fields["priority"]) is str
    for got, (start, duration, _) in zip(fields["attempts"], attempts, strict=True):
        assert abs(got["ms"] - duration * 1000) <= 0.005 + 1e-9
        assert abs(got["start_ms"] - start * 1000) <= 0.005 + 1e-9
