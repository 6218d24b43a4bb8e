"""The embedded default, for real: SmolLM2-135M-Instruct started by bastion, no key needed."""

from __future__ import annotations

import pytest

from bastion.gateway import Gateway

pytestmark = pytest.mark.local_model


async def test_library_chat_and_stream_on_the_embedded_model() -> None:
    gateway = Gateway.from_config(None)
    async with gateway:
        ready = await gateway.ready()
        assert ready["ready"] is True and ready["providers"] == {"local": True}
        result = await gateway.chat({
            "model": "smollm2", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Name a colour."}]})
        message = result.response["choices"][0]["message"]
        assert isinstance(message["content"], str) and message["content"].strip()
        assert result.response["usage"]["completion_tokens"] <= 12
        assert result.target == "local/SmolLM2-135M-Instruct" and result.attempts == 1

        opened = await gateway.chat_stream({
            "model": "smollm2", "max_tokens": 8, "stream": True,
            "messages": [{"role": "user", "content": "Count: one, two,"}]})
        chunks = [c async for c in opened]
        text = "".join((c["choices"][0]["delta"].get("content") or "")
                       for c in chunks if c.get("choices"))
        assert text.strip()
        assert opened.usage is not None and 0 < opened.usage["completion_tokens"] <= 8
        assert not any("usage" in c and c["usage"] for c in chunks)  # not asked for
        process = gateway.providers["local"]._process
        child = process.proc
    assert child.returncode is not None  # bastion stopped the model process with itself


async def test_the_embedded_model_under_an_output_contract() -> None:
    """Whatever the 135M model writes, the caller gets a valid object or a classified error."""
    from pydantic import BaseModel, Field

    from bastion.domain.errors import OutputContractFailed

    class Colour(BaseModel):
        name: str = Field(min_length=1, max_length=40)
        warm: bool

    ticket = {"ticket_id": "T-9", "subject": "Invoice charged twice",
              "body": "My card was charged twice for the March invoice. Please refund one."}
    gateway = Gateway.from_config(None)
    async with gateway:
        try:
            colour = await gateway.structured(
                Colour, [{"role": "user", "content": "Give a colour as JSON with keys name, "
                          "warm (true or false)."}], alias="smollm2", max_tokens=40,
                temperature=0)
        except OutputContractFailed as exc:
            assert exc.violations and exc.incident_id.startswith("inc_")
        else:
            assert isinstance(colour, Colour) and 1 <= len(colour.name) <= 40

        result = await gateway.task("ticket_triage", ticket)
        output = result.output
        assert result.prompt == "ticket_triage@1"
        assert set(output) == {"summary", "suggested_reply", "priority", "reason"}
        assert output["priority"] in ("low", "medium", "high")
        assert 10 <= len(output["reason"]) <= 500 and output["summary"].strip()
        # Either the model's suggestion passed the contract, or the deterministic fallback ran.
        steps = result.ctx.contract_steps
        assert steps and steps[-1].valid is (not result.fallback_used)
