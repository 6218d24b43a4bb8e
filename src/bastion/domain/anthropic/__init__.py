"""Translation between the Anthropic Messages API and the OpenAI Chat Completions shapes.

bastion runs one pipeline, and it speaks OpenAI: every stage (cache, limits, contracts, routing)
sees a chat request and a ``chat.completion``. Anthropic enters in two places, and both are
translations kept here, as pure functions over plain dicts, so they can be tested without HTTP:

- inbound, ``POST /v1/messages`` from an Anthropic SDK: ``messages_request_to_chat`` turns the
  request into a chat request, ``chat_response_to_message`` and ``ChatChunksToMessageEvents``
  turn the pipeline's answer (or stream) back into what the SDK expects;
- outbound, an Anthropic upstream behind the pipeline: ``chat_request_to_messages``,
  ``message_to_chat_response`` and ``MessageEventsToChatChunks`` do the reverse.

The inbound direction is a public API surface, so a request it cannot express faithfully is
rejected with an ``InvalidRequest`` whose ``param`` is the field path, the way Anthropic itself
answers; nothing is silently dropped that would change what the model is asked.
"""

from bastion.domain.anthropic.inbound import (
    ChatChunksToMessageEvents,
    chat_response_to_message,
    messages_request_to_chat,
)
from bastion.domain.anthropic.outbound import (
    MessageEventsToChatChunks,
    chat_request_to_messages,
    message_to_chat_response,
)
from bastion.domain.anthropic.shared import anthropic_error_body, anthropic_error_type

__all__ = [
    "ChatChunksToMessageEvents",
    "MessageEventsToChatChunks",
    "anthropic_error_body",
    "anthropic_error_type",
    "chat_request_to_messages",
    "chat_response_to_message",
    "message_to_chat_response",
    "messages_request_to_chat",
]
