"""Idempotency keys: a retried or duplicated POST runs once, and the repeat gets the answer.

The first request with a key claims it (one atomic ``set_if_absent``), scoped to the tenant and
the endpoint, with a hash of its body. When it finishes, its response (status, headers, body) is
stored under the key for ``ttl_s`` (24 h by default) in the durable store, so a restart does not
forget it. A repeat with the same key:

- and the same body, after the first finished: gets the stored response, with
  ``Idempotent-Replayed: true``;
- and another body: 422 ``idempotency_key_reused`` (a client bug, never silently replayed);
- while the first still runs: waits for it (up to ``wait_s`` and its own deadline) and then
  replays its answer; if it is still running after that, 409 ``idempotency_in_progress``.

A first request that fails with a transient error (5xx, 429) or is cancelled releases the key:
nothing happened, so a retry must be allowed to do it. Other answers, errors included, are
stored and replayed, since running the request again would give the same answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion.config import IdempotencyConfig
from bastion.domain.errors import IdempotencyInProgress, IdempotencyKeyReused, InvalidRequest
from bastion.stores.base import KeyValueStore

MAX_KEY_LENGTH = 255


@dataclass(slots=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    media_type: str


@dataclass(slots=True)
class Claim:
    """The right to run the request once; ``finish`` or ``abandon`` it."""

    guard: IdempotencyGuard
    record_key: str
    body_hash: str

    async def finish(self, response: StoredResponse) -> None:
        if response.status >= 500 or response.status == 429:
            await self.abandon()
            return
        await self.guard.store.set(self.record_key, {
            "state": "done", "hash": self.body_hash, "status": response.status,
            "headers": response.headers, "body": response.body.decode("utf-8", "replace"),
            "media_type": response.media_type}, self.guard.config.ttl_s)

    async def abandon(self) -> None:
        await self.guard.store.delete(self.record_key)


class IdempotencyGuard:
    def __init__(self, store: KeyValueStore, config: IdempotencyConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    async def claim(self, *, tenant: str, endpoint: str, key: str, body: bytes,
                    remaining_s: float) -> Claim | StoredResponse:
        """A ``Claim`` when this request runs, or the stored response to replay."""
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise InvalidRequest(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable "
                                 "characters", param="idempotency-key")
        scope = hashlib.sha256(f"{tenant}\x00{endpoint}\x00{key}".encode()).hexdigest()
        record_key = f"idem:{scope}"
        body_hash = hashlib.sha256(body).hexdigest()
        running = {"state": "running", "hash": body_hash}
        give_up = self.clock() + min(self.config.wait_s, remaining_s)
        pause = 0.02
        while True:
            # A running claim lives as long as the request could; a crashed worker's claim
            # expires with it instead of blocking the key for a day.
            if await self.store.set_if_absent(record_key, running, remaining_s + 30.0):
                return Claim(self, record_key, body_hash)
            record: dict[str, Any] | None = await self.store.get(record_key)
            if record is None:
                continue  # released between our two calls: try to claim again
            if record["hash"] != body_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was already used with a different request body",
                    param="idempotency-key")
            if record["state"] == "done":
                headers = {**record["headers"], "idempotent-replayed": "true"}
                return StoredResponse(record["status"], headers, record["body"].encode(),
                                      record["media_type"])
            if self.clock() >= give_up:
                raise IdempotencyInProgress(
                    "a request with this Idempotency-Key is still running; retry later",
                    param="idempotency-key", retry_after=1.0)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
