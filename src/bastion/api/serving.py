"""Interpreter settings for a ``bastion serve`` worker process: the garbage collector and the
GIL's switch interval.

CPython's cyclic collector runs a young-generation pass every 700 net allocations of
container objects, and a full pass whenever enough objects have survived. A gateway worker
defeats both defaults: each request briefly allocates a few hundred containers (the ASGI scope,
the request context, aiohttp's request and response objects, futures), so 32 requests in
flight cross 700 all the time, and every pass promotes the in-flight requests' objects until a
full pass walks the whole heap (~65,000 objects after start-up: pydantic schemas, the config,
every imported module). Measured on ``bastion serve`` under the load of ``bench/run.py`` (plain chat completions,
one worker, ``gc.callbacks`` timing every pass): about 85 µs of CPU per request went to the
collector, a fifth of the request; with these settings ~3 µs, and 0.44 → 0.34 ms per request.

So once the app has started, the worker:

- freezes every object alive at that point (``gc.freeze``): modules, config, providers and
  connection pools live as long as the process, and the collector stops walking them;
- raises the young-generation threshold to ``GEN0_THRESHOLD``, so in-flight requests are not
  promoted by a pass every few requests. Almost everything a request allocates is freed by
  reference counting when it ends; the collector only has to find the rare cycle (an exception
  and its traceback), and those wait a little longer. At 10,000 a worker collects a few times
  per 10,000 requests instead of several hundred times.

It also shortens the GIL's switch interval from 5 ms to ``SWITCH_INTERVAL_S``. The worker's
SQLite writers (usage ledger, request journal, budget totals) run in threads, and the sqlite3
module gives up the GIL around every statement step; with the event loop busy, each step then
waited up to 5 ms to get it back, so a journal trim or a dashboard read over a few hundred rows
took seconds and the ledger's queue filled until rows were dropped (``bench/soak.py``, one
worker at saturation). The interval only matters while another thread waits for the GIL,
a few hundred times a second here.

Only the server does this: a library user's process keeps its own settings.
"""

from __future__ import annotations

import gc
import sys

#: Net container allocations between young-generation passes (CPython's default: 700).
GEN0_THRESHOLD = 10_000
#: The GIL's switch interval in a worker (CPython's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005


def tune_for_serving() -> None:
    """Call once, after start-up, in the worker process that serves requests."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
