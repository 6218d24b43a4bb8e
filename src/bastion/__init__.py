"""bastion: the production boundary for LLM calls.

The public API is re-exported here: ``Gateway`` (the pipeline, in-process), the request
models, and the error taxonomy.
"""

from bastion.config import ConfigError, load_config
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import Priority, RequestContext
from bastion.domain.errors import (
    AllTargetsFailed,
    BastionError,
    DeadlineExceeded,
    DependencyError,
    InternalError,
    InvalidRequest,
    UserError,
)
from bastion.gateway import Gateway
from bastion.services.chat import ChatResult, ChatStreamResult

__version__ = "0.1.0"

__all__ = [
    "AllTargetsFailed",
    "BastionError",
    "ChatRequest",
    "ChatResult",
    "ChatStreamResult",
    "ConfigError",
    "DeadlineExceeded",
    "DependencyError",
    "EmbeddingsRequest",
    "Gateway",
    "InternalError",
    "InvalidRequest",
    "Priority",
    "RequestContext",
    "UserError",
    "load_config",
]
