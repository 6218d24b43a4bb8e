"""An in-process model that fails on purpose, the same way every time.

Retries, breakers, fallbacks, deadlines and output contracts are only trustworthy if every
upstream failure can be reproduced on demand. ``SimulatedProvider`` speaks the same interface
and raises the same taxonomy errors as the HTTP adapters, with no network and no model, so tests,
benchmarks and demos can script any failure and replay it under a seed. Its success path does
almost no work (the reply is split into chunks once, no sleep when latency is 0), so benchmarks
through it measure the gateway's own overhead.

Latency
    Every call first waits a latency drawn from ``config.latency`` (fixed, uniform or lognormal)
    with a ``random.Random(config.seed)``; fault draws come from the same generator, so a given
    seed replays the same sequence of outcomes. As with a real upstream, a wait longer than the
    attempt's timeout (``CallTimeout.total_s``) ends in ``UpstreamTimeout`` at that timeout.

Faults
    ``config.faults`` is a list of ``{"kind": K, "rate": 0..1 (default 1), ...params}``. On each
    call the list is walked in order and the first fault that applies and whose draw is below
    its ``rate`` is injected. Every fault also takes:

    - ``fail_times: N`` -- inject it only on the first N calls carrying the same request id
      (``ctx.request_id``), then let them succeed: a retry recovers.
    - ``only_model: "name"`` -- inject it only when the target model is ``name``: the primary of a
      fallback chain fails while a fallback on the same provider answers.

    ============================  ==============================================================
    kind (params)                 effect
    ============================  ==============================================================
    ``status`` (``status``,       ``error_for_upstream_status(status)``: 5xx unavailable, 504
    default 500)                  timeout, 4xx rejected (retry-after params are accepted too)
    ``rate_limit``                429 ``UpstreamRateLimited``; ``retry_after_s`` (seconds),
                                  ``retry_after_ms``, or ``retry_after_date: true`` (the
                                  seconds sent as an HTTP date), all read back through
                                  ``providers.http.parse_retry_after``
    ``connect_error``             ``UpstreamConnectError`` at once (connection refused)
    ``read_timeout``              waits the attempt timeout (or what is left of the deadline,
                                  if less), then ``UpstreamTimeout``
    ``hang``                      accepts and never answers; only cancellation ends the call
    ``malformed_json``            ``UpstreamMalformed``, as when a body does not parse
    ``invalid_output``            succeeds, with ``content`` (default ``"{not json"``) as the
                                  message: for output-contract tests
    ``tool_call``                 answers with a call to the tool named by ``tool_choice`` or
                                  else the first declared tool, with ``arguments`` (a JSON
                                  string or an object; default ``"{}"``); applies only when the
                                  request declares tools and ``tool_choice`` is not ``"none"``
    ``slow_first_token``          waits ``delay_s`` more before the answer or first chunk
    ``slow_stream``               streams with ``interval_s`` between chunks
    ``stream_error_after``        streams ``chunks`` chunks, then ``UpstreamUnavailable``
                                  (``chunks: 0`` fails before the first chunk, while
                                  ``open_stream`` can still be retried)
    ``stream_no_done``            streams the content, then ends without a finish chunk, usage
                                  or ``[DONE]``: ``UpstreamMalformed``
    ============================  ==============================================================

    Stream-only kinds (the last three) do not apply to ``chat``; embeddings take only the
    transport kinds (``status`` to ``malformed_json``, and ``slow_first_token``).

Per-request override
    A client may send the header ``X-Bastion-Simulate`` with a JSON object; the gateway puts it
    in ``ctx.simulate``. It is either one fault, ``{"kind": "status", "status": 503}``, or a
    list, ``{"faults": [...]}`` (``{"faults": []}`` means "no fault"), and replaces the
    configured faults for that request. It is honoured only when the provider's
    ``allow_request_override`` is true (the default, since this provider exists for testing);
    otherwise it is ignored. A malformed override is the caller's mistake: ``InvalidRequest``.
"""

from __future__ import annotations

from bastion.providers.simulated.provider import SimulatedProvider

__all__ = ["SimulatedProvider"]
