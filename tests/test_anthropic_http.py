"""`POST /v1/messages` with the official anthropic SDK: same pipeline, Anthropic shapes."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.conftest import LiveGateway

MSG = [{"role": "user", "content": "hello there"}]


def client(live: LiveGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.base_url, api_key="unused", max_retries=0)


def test_create_message(live: LiveGateway) -> None:
    raw = client(live).messages.with_raw_response.create(
        model="fast", max_tokens=50, messages=MSG, system="Be brief.")
    message = raw.parse()
    assert message.role == "assistant"
    assert message.content[0].text == "Hello from the simulated model."
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-bastion-target"] == "sim/sim-primary"
    assert raw.headers["request-id"] == raw.headers["x-request-id"]


def test_stream_message(live: LiveGateway) -> None:
    with client(live).messages.stream(model="fast", max_tokens=50, messages=MSG) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the simulated model."
    assert final.content[0].text == text
    assert final.usage.output_tokens > 0


def test_fallback_works_the_same_on_messages(live: LiveGateway) -> None:
    raw = client(live).messages.with_raw_response.create(
        model="fast", max_tokens=50, messages=MSG,
        extra_headers={"X-Bastion-Simulate":
                       '{"kind": "status", "status": 503, "only_model": "sim-primary"}'})
    assert raw.parse().content[0].text == "Hello from the backup model."
    assert raw.headers["x-bastion-fallback"] == "true"


def test_errors_use_the_anthropic_shape_and_sdk_types(live: LiveGateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client(live).messages.create(model="nope", max_tokens=5, messages=MSG)
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client(live).messages.create(model="fast", max_tokens=5, messages=[])


def test_missing_max_tokens_is_400_naming_it(live: LiveGateway) -> None:
    resp = httpx.post(live.base_url + "/v1/messages",
                      json={"model": "fast", "messages": MSG})
    assert resp.status_code == 400
    assert "max_tokens" in resp.json()["error"]["message"]


def test_mid_stream_failure_surfaces_as_an_sdk_error(live: LiveGateway) -> None:
    with pytest.raises(anthropic.APIStatusError), client(live).messages.stream(
            model="fast", max_tokens=50, messages=MSG,
            extra_headers={"X-Bastion-Simulate":
                           '{"kind": "stream_error_after", "chunks": 2}'}) as stream:
        for _ in stream.text_stream:
            pass
