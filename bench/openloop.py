"""An open-loop (fixed-rate) HTTP/1.1 load generator: wrk2/vegeta-style, no coordinated omission.

    python bench/openloop.py URL --rate 1000 --duration 10            # POST a chat body
    python bench/openloop.py URL --rate 500 --stream --unique --json  # SSE, unique bodies
    python bench/openloop.py URL --method GET --path /health --rate 100

Request ``i`` is due at ``t0 + i / rate``, whatever the server does. At its due time it is
written to an idle keep-alive connection or, when none is idle, to a new one; when
``max_conns`` connections are open and all busy it waits in a FIFO queue and is sent on the
first connection to come free. Its latency is *response complete - due time*, so time spent
waiting for a connection, or behind a server that fell behind, is counted (a closed-loop tool
such as wrk only measures from its actual send, which hides the stall it caused: coordinated
omission). For a body (SSE or not) the time to its first byte is recorded too, from the due
time as well.

Cheap by construction: uvloop + httptools on raw ``asyncio.Protocol`` connections, the request
bytes formatted with one ``bytes %`` per request, and the schedule driven by a periodic Linux
``timerfd`` (CLOCK_MONOTONIC, ns resolution), read by the event loop like a socket, instead of
the loop's millisecond timers (libuv rounds to 1 ms, which would make requests leave up to
~0.6 ms late, or spin). Elsewhere it falls back to ``loop.call_later``. ``send_lag`` in the
result (actual write - due time) shows how well the schedule was kept, and ``cpu`` the
generator's own CPU seconds (process time: this process, every thread).

Errors, by kind: ``connect`` (could not connect), ``closed`` (connection closed or reset before
the response was complete), ``parse`` (not HTTP), ``timeout`` (sent, not complete ``timeout``
seconds after its due time), ``not_sent`` (still waiting for a connection ``timeout`` seconds
after its due time, or when the run ended), ``status_<code>`` (complete, status != 200; its
latency is not in the percentiles). The first ``warmup`` seconds of the schedule are sent and
answered like the rest but left out of every statistic. A run ends at the latest ``timeout`` +
1 s after the last due time, however far behind the server is.

Importable: ``run(Config(...)) -> dict`` (starts its own event loop), or ``await
OpenLoop(cfg).run()`` inside one.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools
from harness import raise_nofile

Method = str | bytes
#: ``request(i) -> (method, path, body)`` for the i-th request of the schedule (0-based).
RequestFactory = Callable[[int], tuple[Method, Method, bytes]]

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux: the clock the timerfd runs on


@dataclass
class Config:
    url: str                       # http://host:port (a path in it is ignored: see request)
    rate: float                    # requests per second
    duration: float                # seconds measured (after the warm-up)
    request: RequestFactory        # method, path and body of request i
    warmup: float = 2.0            # seconds of schedule sent first and left out of the stats
    headers: dict[str, str] = field(default_factory=dict)  # on every request
    timeout: float = 10.0          # seconds after the due time; then it is an error
    max_conns: int = 2000          # open connections at most (no pipelining: = max in flight)
    idle_close: float = 2.0        # close a connection idle this long (servers drop them at
    #                                ~5 s; racing that would show up as "closed" errors)
    #: called as on_window("start") just before the first measured request is sent and
    #: on_window("end") just after the last one; keep it short (it runs in the loop).
    on_window: Callable[[str], None] | None = None


# --------------------------------------------------------------------------- timerfd

_CLOCK_MONOTONIC, _TFD_TIMER_ABSTIME = 1, 1
_TFD_NONBLOCK, _TFD_CLOEXEC = os.O_NONBLOCK, 0o2000000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_TIMERFD_OK = (_LIBC is not None and "CLOCK_MONOTONIC" in
               time.get_clock_info("monotonic").implementation)


def _timerfd_periodic(first_ns: int, period_ns: int) -> int | None:
    """A non-blocking timerfd that expires at ``first_ns`` (absolute, CLOCK_MONOTONIC) and
    every ``period_ns`` after; each read returns how many expirations it has seen since the
    last read. None when the platform has none."""
    if not _TIMERFD_OK:
        return None
    fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        return None
    spec = _Itimerspec(_Timespec(period_ns // 1_000_000_000, period_ns % 1_000_000_000),
                       _Timespec(first_ns // 1_000_000_000, first_ns % 1_000_000_000))
    if _LIBC.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
        os.close(fd)
        return None
    return fd


# --------------------------------------------------------------------------- connection


class _Conn(asyncio.Protocol):
    """One keep-alive connection, at most one request in flight on it."""

    __slots__ = ("dead", "due", "first", "gen", "idle_since", "idx", "parser", "pending",
                 "sent", "status", "task", "transport")

    def __init__(self, gen: OpenLoop) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idx = -1          # the request in flight, -1 when idle
        self.due = self.sent = self.first = 0
        self.status = 0
        self.idle_since = 0
        self.dead = False
        self.pending: bytes | None = None   # written as soon as the connection is made
        self.task: asyncio.Task | None = None

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        data, self.pending = self.pending, None
        if self.dead:
            transport.abort()  # type: ignore[attr-defined]
        elif data is not None:
            self.sent = now_ns()
            transport.write(data)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen._fail(self, "parse")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.idx >= 0:
            self.gen._fail(self, "closed")
        else:
            self.gen._drop(self)

    # -- httptools
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = now_ns()

    def on_message_complete(self) -> None:
        if self.idx >= 0:
            self.gen._done(self, now_ns(), self.parser.should_keep_alive())


# --------------------------------------------------------------------------- generator


def percentiles(values: list[int], scale: float = 1e-6) -> dict[str, float] | None:
    """Exact (nearest-rank) percentiles of ``values`` (ns), in ms by default."""
    if not values:
        return None
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:
        return s[max(0, math.ceil(p / 100 * n) - 1)] * scale

    return {"min": s[0] * scale, "mean": sum(s) / n * scale, "p50": q(50), "p90": q(90),
            "p99": q(99), "p999": q(99.9), "max": s[-1] * scale, "n": n}


class OpenLoop:
    def __init__(self, cfg: Config) -> None:
        if cfg.rate <= 0 or cfg.duration <= 0 or cfg.warmup < 0 or cfg.timeout <= 0:
            raise ValueError("need rate > 0, duration > 0, warmup >= 0, timeout > 0")
        if cfg.max_conns < 1:
            raise ValueError("need max_conns >= 1")
        self.cfg = cfg
        u = urlsplit(cfg.url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"only http://host[:port] URLs: {cfg.url!r}")
        self.host, self.port = u.hostname, u.port or 80
        hostport = u.netloc.rsplit("@", 1)[-1]
        extra = {k: v for k, v in cfg.headers.items()
                 if k.lower() not in ("host", "content-length", "connection")}
        self.head_tail = (f"Host: {hostport}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in extra.items())).encode("latin-1")
        self.period_ns = max(1, round(1e9 / cfg.rate))
        self.n_warm = round(cfg.warmup * 1e9 / self.period_ns)
        self.n = self.n_warm + max(1, round(cfg.duration * 1e9 / self.period_ns))
        self.timeout_ns = int(cfg.timeout * 1e9)
        self.idle_ns = int(cfg.idle_close * 1e9)
        self.t0 = 0
        self.next = 0                     # the next index to dispatch
        self.idle: collections.deque[_Conn] = collections.deque()  # right end: last used
        self.busy: set[_Conn] = set()
        self.queue: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self.nconns = 0
        # stats (measured requests only, unless named warmup_)
        self.lat: list[int] = []
        self.ttfb: list[int] = []
        self.lag: list[int] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.warmup_errors: collections.Counter[str] = collections.Counter()
        self.ok = 0
        self.sent = 0
        self.responses = 0                # responses of any status, warm-up included
        self.last_ok = 0
        self.connects = 0
        self.max_conns_seen = 0
        self.max_in_flight = 0
        self.max_queued = 0
        self.window: dict[str, float] = {}
        self.timerfd: int | None = None
        self.finished: asyncio.Future | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- request bytes
    def _build(self, i: int) -> bytes:
        method, path, body = self.cfg.request(i)
        if isinstance(method, str):
            method = method.encode()
        if isinstance(path, str):
            path = path.encode()
        if body:
            return b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
                method, path, self.head_tail, len(body), body)
        return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, path, self.head_tail)

    # -- schedule
    def _on_timer(self) -> None:
        try:
            k = int.from_bytes(os.read(self.timerfd, 8), sys.byteorder)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        self._dispatch_upto(k)

    def _on_call_later(self) -> None:
        now = now_ns()
        due_count = (now - self.t0) // self.period_ns + 1 - self.next
        self._dispatch_upto(max(0, due_count))
        if self.next < self.n:
            delay = (self.t0 + self.next * self.period_ns - now_ns()) / 1e9
            self.loop.call_later(max(delay, 0.001), self._on_call_later)  # type: ignore[union-attr]

    def _dispatch_upto(self, k: int) -> None:
        period, t0, n, n_warm = self.period_ns, self.t0, self.n, self.n_warm
        for _ in range(k):
            i = self.next
            if i >= n:
                break
            if i == n_warm:
                self._window("start")
            self.next = i + 1
            self._dispatch(i, t0 + i * period)
            if i == n - 1:
                self._window("end")
                self._stop_timer()
                self._check_finished()

    def _window(self, phase: str) -> None:
        # The hook runs outside the window's CPU: before its start, after its end.
        if phase == "start" and self.cfg.on_window is not None:
            self.cfg.on_window(phase)
        self.window[f"{phase}_ns"] = now_ns()
        self.window[f"{phase}_cpu"] = time.process_time()
        self.window[f"{phase}_responses"] = self.responses
        self.window[f"{phase}_sent"] = self.sent
        if phase == "end" and self.cfg.on_window is not None:
            self.cfg.on_window(phase)

    def _stop_timer(self) -> None:
        if self.timerfd is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.timerfd)  # type: ignore[union-attr]
            os.close(self.timerfd)
            self.timerfd = None

    def _dispatch(self, i: int, due: int) -> None:
        data = self._build(i)
        idle = self.idle
        while idle:
            c = idle.pop()
            if not c.dead:
                self._send(c, i, due, data)
                return
        if self.nconns < self.cfg.max_conns:
            self._open(i, due, data)
        else:
            self.queue.append((i, due, data))
            self.max_queued = max(self.max_queued, len(self.queue))

    def _send(self, c: _Conn, i: int, due: int, data: bytes) -> None:
        c.idx, c.due, c.first, c.status = i, due, 0, 0
        self.busy.add(c)
        self.max_in_flight = max(self.max_in_flight, len(self.busy))
        self.sent += 1
        c.sent = now_ns()
        c.transport.write(data)  # type: ignore[union-attr]

    def _open(self, i: int, due: int, data: bytes) -> None:
        c = _Conn(self)
        c.idx, c.due, c.pending = i, due, data
        self.nconns += 1
        self.connects += 1
        self.max_conns_seen = max(self.max_conns_seen, self.nconns)
        self.busy.add(c)
        self.max_in_flight = max(self.max_in_flight, len(self.busy))
        self.sent += 1
        c.task = self.loop.create_task(self._connect(c))  # type: ignore[union-attr]

    async def _connect(self, c: _Conn) -> None:
        try:
            await self.loop.create_connection(lambda: c, self.host, self.port)  # type: ignore
        except (TimeoutError, OSError):
            c.task = None
            self._fail(c, "connect")
        except asyncio.CancelledError:
            c.task = None
        else:
            c.task = None

    # -- outcomes
    def _done(self, c: _Conn, now: int, keep_alive: bool) -> None:
        i, due = c.idx, c.due
        c.idx = -1
        self.busy.discard(c)
        self.responses += 1
        if i >= self.n_warm:
            if c.status == 200:
                self.ok += 1
                self.last_ok = now
                self.lat.append(now - due)
                self.lag.append(c.sent - due)
                if c.first:
                    self.ttfb.append(c.first - due)
            else:
                self.errors[f"status_{c.status}"] += 1
        elif c.status != 200:
            self.warmup_errors[f"status_{c.status}"] += 1
        if not keep_alive:
            self._close(c)
        elif self.queue:
            qi, qdue, data = self.queue.popleft()
            self._send(c, qi, qdue, data)
        else:
            c.idle_since = now
            self.idle.append(c)
        self._check_finished()

    def _count(self, i: int, kind: str) -> None:
        (self.errors if i >= self.n_warm else self.warmup_errors)[kind] += 1

    def _fail(self, c: _Conn, kind: str) -> None:
        if c.idx >= 0:
            self._count(c.idx, kind)
            c.idx = -1
        self.busy.discard(c)
        self._close(c)
        self._check_finished()

    def _close(self, c: _Conn) -> None:
        t = c.transport
        self._drop(c)
        if t is not None:
            t.abort()
        elif c.task is not None:
            c.task.cancel()

    def _drop(self, c: _Conn) -> None:
        """``c`` is no longer usable (closed, failed, or closing): forget it once, and let a
        queued request open a connection in its place."""
        if c.dead:
            return
        c.dead = True
        self.nconns -= 1
        while self.queue and self.nconns < self.cfg.max_conns:
            qi, qdue, data = self.queue.popleft()
            self._open(qi, qdue, data)

    def _sweep(self) -> None:
        """Every 50 ms: time-outs, expired queue entries, connections idle too long."""
        now = now_ns()
        limit = now - self.timeout_ns
        for c in [c for c in self.busy if c.due < limit]:
            self._fail(c, "timeout")
        q = self.queue
        while q and q[0][1] < limit:
            self._count(q.popleft()[0], "not_sent")
        idle, old = self.idle, now - self.idle_ns
        while idle and (idle[0].dead or idle[0].idle_since < old):
            c = idle.popleft()
            if not c.dead:
                self._close(c)
        self._check_finished()
        if not self.finished.done():  # type: ignore[union-attr]
            self.loop.call_later(0.05, self._sweep)  # type: ignore[union-attr]

    def _check_finished(self) -> None:
        if self.next >= self.n and not self.busy and not self.queue:
            f = self.finished
            if f is not None and not f.done():
                f.set_result(None)

    # -- the run
    async def run(self) -> dict:
        self.loop = loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        cfg = self.cfg
        raise_nofile(cfg.max_conns + 64)
        gc.collect()
        gc.freeze()
        cpu0, wall0 = time.process_time(), time.monotonic()
        self.t0 = now_ns() + 20_000_000  # 20 ms from now
        self.timerfd = _timerfd_periodic(self.t0, self.period_ns)
        if self.timerfd is not None:
            loop.add_reader(self.timerfd, self._on_timer)
            scheduler = "timerfd"
        else:
            loop.call_later(0.02, self._on_call_later)
            scheduler = "call_later"
        loop.call_later(0.05, self._sweep)
        last_due = self.t0 + (self.n - 1) * self.period_ns
        hard_end = (last_due - now_ns()) / 1e9 + cfg.timeout + 1.0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.finished), hard_end)
        # Whatever is left (only when the loop itself was starved): count it, close it all.
        self._stop_timer()
        never = self.n - self.next
        if never:
            self.errors["not_sent"] += sum(1 for i in range(self.next, self.n)
                                           if i >= self.n_warm)
            self.warmup_errors["not_sent"] += sum(1 for i in range(self.next, self.n)
                                                  if i < self.n_warm)
            self.next = self.n
        for c in list(self.busy):
            self._fail(c, "timeout")
        while self.queue:
            self._count(self.queue.popleft()[0], "not_sent")
        if not self.finished.done():
            self.finished.set_result(None)
        for c in list(self.idle):
            if not c.dead:
                self._close(c)
        self.idle.clear()
        await asyncio.sleep(0)
        cpu1, wall1 = time.process_time(), time.monotonic()
        gc.unfreeze()
        return self._result(scheduler, cpu1 - cpu0, wall1 - wall0)

    def _result(self, scheduler: str, cpu: float, wall: float) -> dict:
        measured = self.n - self.n_warm
        start = self.t0 + self.n_warm * self.period_ns
        w = self.window
        w_sent = w.get("end_sent", 0) - w.get("start_sent", 0)
        w_cpu = w.get("end_cpu", 0.0) - w.get("start_cpu", 0.0)
        # vegeta's throughput: ok / (first due .. last ok response), but at least the
        # scheduled span, so a target that keeps up shows the offered rate, not a hair above.
        span = max(self.last_ok - start, measured * self.period_ns) / 1e9 if self.ok else 0.0
        errors = dict(sorted(self.errors.items()))
        return {
            "url": self.cfg.url, "rate": self.cfg.rate, "duration_s": self.cfg.duration,
            "warmup_s": self.cfg.warmup, "timeout_s": self.cfg.timeout,
            "max_conns": self.cfg.max_conns, "scheduler": scheduler,
            "scheduled": measured, "ok": self.ok,
            "errors": errors, "error_total": sum(errors.values()),
            "timed_out": errors.get("timeout", 0), "not_sent": errors.get("not_sent", 0),
            "warmup_errors": dict(sorted(self.warmup_errors.items())),
            "achieved_rps": self.ok / span if span > 0 else 0.0,
            "latency_ms": percentiles(self.lat),
            "ttfb_ms": percentiles(self.ttfb),
            "send_lag_ms": percentiles(self.lag),
            "connections_opened": self.connects, "max_connections": self.max_conns_seen,
            "max_in_flight": self.max_in_flight, "max_queued": self.max_queued,
            "window": {"seconds": (w.get("end_ns", 0) - w.get("start_ns", 0)) / 1e9,
                       "sent": w_sent,
                       "responses": w.get("end_responses", 0) - w.get("start_responses", 0)},
            "cpu": {"total_s": cpu, "wall_s": wall,
                    "window_s": w_cpu,
                    # the generator's own CPU per request sent during the measured window
                    "us_per_req": w_cpu / w_sent * 1e6 if w_sent else 0.0},
        }


def run(cfg: Config) -> dict:
    """One open-loop run on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(OpenLoop(cfg).run())
    return uvloop.run(OpenLoop(cfg).run())


# --------------------------------------------------------------------------- chat bodies

# The bodies of bench/post.lua (and harness.SANITY_BODY), byte for byte.
_SYSTEM = (b'{"model":"bench-model","messages":['
           b'{"role":"system","content":"You are a concise assistant."},'
           b'{"role":"user","content":"Say hello to the benchmark in one short sentence.')
_SAMPLED = b'"}],"max_tokens":32,"temperature":0.7'
_DETERMINISTIC = b'"}],"max_tokens":32,"temperature":0'
_STREAMING = b',"stream":true,"stream_options":{"include_usage":true}'
CHAT_PATH = "/v1/chat/completions"


def chat_requests(stream: bool = False, nonce: str | None = None,
                  path: str = CHAT_PATH) -> RequestFactory:
    """post.lua's request: a small chat completion body (``"stream": true`` when ``stream``).
    With a ``nonce``, deterministic (temperature 0) and unique per request (``[nonce-i]`` in
    the user message): a response-cache lookup that misses, every time; else sampled
    (temperature 0.7), which a cache passes by."""
    tail = _STREAMING + b"}" if stream else b"}"
    p = path.encode()
    if nonce is None:
        body = _SYSTEM + _SAMPLED + tail
        return lambda i: (b"POST", p, body)
    head = _SYSTEM + b" [" + nonce.encode() + b"-"
    end = b"]" + _DETERMINISTIC + tail
    return lambda i: (b"POST", p, b"%s%d%s" % (head, i, end))


# --------------------------------------------------------------------------- CLI


def summary(r: dict) -> str:
    lat, ttfb, lag = r["latency_ms"], r["ttfb_ms"], r["send_lag_ms"]
    lines = [(f"offered {r['rate']:g} req/s for {r['duration_s']:g} s (+{r['warmup_s']:g} s "
              f"warm-up, scheduler {r['scheduler']}): {r['ok']}/{r['scheduled']} ok, "
              f"achieved {r['achieved_rps']:.1f} req/s")]
    if lat:
        lines.append("latency ms (from due time): " + "  ".join(
            f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99", "p999", "max")))
    if ttfb:
        lines.append("first body byte ms:         " + "  ".join(
            f"{k} {ttfb[k]:.3f}" for k in ("p50", "p90", "p99", "p999", "max")))
    if lag:
        lines.append("send lag ms (sent - due):   " + "  ".join(
            f"{k} {lag[k]:.3f}" for k in ("p50", "p90", "p99", "p999", "max")))
    lines.append(f"errors: {r['errors'] or 'none'}"
                 + (f"  (warm-up: {r['warmup_errors']})" if r["warmup_errors"] else ""))
    lines.append(f"connections opened {r['connections_opened']}, max open "
                 f"{r['max_connections']}, max in flight {r['max_in_flight']}, max queued "
                 f"{r['max_queued']}")
    c = r["cpu"]
    lines.append(f"generator CPU: {c['us_per_req']:.1f} us/request in the window "
                 f"({c['window_s'] / max(r['window']['seconds'], 1e-9):.1%} of a core), "
                 f"{c['total_s']:.2f} s in {c['wall_s']:.1f} s in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Open-loop (fixed-rate) HTTP/1.1 load generator.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("url", help="http://host:port (a path in it is used unless --path is given)")
    p.add_argument("-r", "--rate", type=float, default=100.0, help="requests per second")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds measured")
    p.add_argument("-w", "--warmup", type=float, default=2.0, help="seconds sent first, unmeasured")
    p.add_argument("-X", "--method", default="POST")
    p.add_argument("--path", default=None, help=f"default: the URL's path, else {CHAT_PATH}")
    p.add_argument("--body", default=None, help="a fixed body (default: post.lua's chat body)")
    p.add_argument("--body-file", default=None, help="a fixed body from a file")
    p.add_argument("--stream", action="store_true", help='chat body with "stream": true (SSE)')
    p.add_argument("--unique", action="store_true",
                   help="chat body made deterministic and unique per request (cache misses)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="NAME: VALUE")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds after the due time")
    p.add_argument("--max-conns", type=int, default=2000)
    p.add_argument("--idle-close", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    u = urlsplit(args.url)
    path = args.path or (u.path if u.path not in ("", "/") else CHAT_PATH)
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            p.error(f"header {h!r} is not NAME: VALUE")
        headers[name.strip()] = value.strip()
    if args.body is not None or args.body_file is not None:
        if args.body is not None:
            body = args.body.encode()
        else:
            with open(args.body_file, "rb") as f:
                body = f.read()
        request: RequestFactory = lambda i: (args.method, path, body)
    elif args.method.upper() in ("GET", "HEAD", "DELETE"):
        request = lambda i: (args.method, path, b"")
    else:
        request = chat_requests(args.stream, uuid.uuid4().hex[:12] if args.unique else None,
                                path)
    has_body = args.body is not None or args.body_file is not None or \
        args.method.upper() not in ("GET", "HEAD", "DELETE")
    if has_body and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    cfg = Config(url=f"http://{u.netloc}", rate=args.rate, duration=args.duration,
                 warmup=args.warmup, request=request, headers=headers, timeout=args.timeout,
                 max_conns=args.max_conns, idle_close=args.idle_close)
    r = run(cfg)
    print(json.dumps(r, indent=2) if args.json else summary(r))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
