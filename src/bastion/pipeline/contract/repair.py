"""The repair request: one more chance for the same target, told exactly what was wrong.

The repair carries the original conversation once, the rejected answer, and the validation
errors; never the history twice. A rejected tool call is answered the way the tool protocol
expects (a ``tool`` message per call id carrying the error), so the model can call again.
"""

from __future__ import annotations

from typing import Any

from bastion.domain.chat import ChatRequest
from bastion.pipeline.contract.schema import Violation

#: The rejected answer is echoed back at most this long; the errors matter, not the bulk.
MAX_ECHO_CHARS = 4000


def summarize(violations: list[Violation]) -> str:
    return "; ".join(str(v) for v in violations)


def repair_request(request: ChatRequest, response: dict[str, Any],
                   violations: list[Violation]) -> ChatRequest:
    message = ((response.get("choices") or [{}])[0] or {}).get("message") or {}
    errors = "\n".join(f"- {v}" for v in violations)
    extra: list[dict[str, Any]]
    calls = message.get("tool_calls") or []
    if calls and all(isinstance(c, dict) and c.get("id") for c in calls):
        extra = [{"role": "assistant", "content": None, "tool_calls": calls}]
        extra += [{"role": "tool", "tool_call_id": c["id"],
                   "content": "The call was rejected before it ran:\n" + errors +
                              "\nCall the tool again with arguments that satisfy its schema."}
                  for c in calls]
    else:
        content = message.get("content")
        echoed = content[:MAX_ECHO_CHARS] if isinstance(content, str) else ""
        extra = [{"role": "assistant", "content": echoed},
                 {"role": "user", "content": "Your previous answer was rejected:\n" + errors +
                  "\nAnswer again with only the corrected JSON, nothing else."}]
    body = request.model_dump(exclude_none=True, exclude_unset=True)
    body["messages"] = [*body["messages"], *extra]
    return ChatRequest.model_validate(body)
