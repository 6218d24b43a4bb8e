"""The path one request took, as text: what ``bastion trace REQUEST_ID`` prints.

Built from the request's journal entry (its ``request.completed`` event): a header with the
outcome, tenant, route, timings, tokens and cost, then every stage, upstream attempt and
contract check on one timeline, in the order they started, each with its offset from the
request's start and its duration. Attempts and contract checks are indented under the stage
that contains them (``route``).
"""

from __future__ import annotations

import time
from typing import Any


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f} ms"


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _steps(event: dict[str, Any]) -> list[tuple[float, float, int, str]]:
    """(start_ms, duration_ms, depth, text) of every stage, attempt and contract check."""
    stages = [(float(s[1]), float(s[2]), s[0], s[3]) for s in event.get("stages") or []]
    containers = [(start, start + dur) for start, dur, name, _ in stages if name == "route"]

    def depth(start: float) -> int:
        return 1 if any(lo <= start <= hi for lo, hi in containers) else 0

    steps = [(start, dur, 0, f"{name:<12} {outcome}") for start, dur, name, outcome in stages]
    for a in event.get("attempts") or []:
        called = "" if a.get("called", True) else "  (skipped, not called)"
        steps.append((float(a["start_ms"]), float(a["ms"]), depth(float(a["start_ms"])),
                      f"attempt {a['n']} {a['target']:<28} {a['outcome']}{called}"))
    for c in event.get("contract_steps") or []:
        verdict = "valid" if c["valid"] else f"invalid ({c['violations']} violation(s))"
        steps.append((float(c["start_ms"]), float(c["ms"]), depth(float(c["start_ms"])),
                      f"contract {c['phase']:<6} {c['target']:<26} {verdict}"))
    # Stages are recorded when they end; show everything in the order it started, a
    # container before what it contains.
    steps.sort(key=lambda s: (s[0], s[2]))
    return steps


def render_trace(event: dict[str, Any]) -> list[str]:
    """The lines ``bastion trace`` prints for one journal event."""
    status = event.get("status")
    lines = [
        (f"{event.get('request_id', '-')}  {event.get('method', '')} {event.get('path', '')}"
         f" -> {status} {event.get('outcome', '-')}  at {_when(event.get('ts'))}"),
        (f"tenant {event.get('tenant', '-')}  route {event.get('route', '-')}  key "
         f"{event.get('key_id') or '-'}  priority {event.get('priority', '-')}"),
    ]
    latency, upstream = event.get("latency_ms"), event.get("upstream_ms")
    own = None if latency is None or upstream is None else float(latency) - float(upstream)
    lines.append(f"total {_ms(latency)}  upstream {_ms(upstream)}  outside upstream {_ms(own)}"
                 + (f"  first token {_ms(event['ttft_ms'])}" if "ttft_ms" in event else ""))
    tokens = (f"tokens {event.get('prompt_tokens') or 0} in / "
              f"{event.get('completion_tokens') or 0} out")
    lines.append(f"{tokens}  cost ${float(event.get('cost_usd') or 0):.6f}  cache "
                 f"{event.get('cache') or '-'}  prompt {event.get('prompt') or '-'}  contract "
                 f"{event.get('contract') or '-'}")
    target = event.get("target")
    if target:
        how = "after falling back" if event.get("fallback") else "first choice"
        lines.append(f"answered by {target} ({how}, {event.get('calls', 0)} upstream call(s))")
    elif event.get("attempts"):
        lines.append(f"no target answered ({event.get('calls', 0)} upstream call(s))")
    if event.get("trace_id"):
        lines.append(f"trace {event['trace_id']}")
    steps = _steps(event)
    if steps:
        lines.append("")
        lines.append(f"{'start':>10}  {'took':>10}  step")
        for start, duration, depth, text in steps:
            lines.append(f"{start:>7.2f} ms  {duration:>7.2f} ms  {'  ' * depth}{text}")
    retrieved = event.get("retrieved")
    if retrieved is not None:
        lines.append("")
        lines.append(f"retrieved {len(retrieved)} chunk(s):" if retrieved else
                     "retrieved nothing")
        lines.extend(f"  {chunk_id}  {score}" for chunk_id, score in retrieved)
    return lines
