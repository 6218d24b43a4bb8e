"""The one versioned config file (see ``loader``); sections live in one module each."""

from bastion.config.admission import (
    AdmissionConfig,
    AuthConfig,
    Budget,
    BudgetsConfig,
    CacheConfig,
    IdempotencyConfig,
    LedgerConfig,
    LimitsConfig,
    Price,
    RateLimit,
    StateConfig,
)
from bastion.config.answer import AnswerConfig
from bastion.config.loader import (
    ConfigError,
    LoadedConfig,
    load_config,
    parse_config,
    read_secret,
)
from bastion.config.models import BreakerPolicy, ModelAlias, TargetConfig
from bastion.config.observability import (
    ContentLoggingConfig,
    JournalConfig,
    ObservabilityConfig,
    TracingConfig,
)
from bastion.config.providers import (
    AnthropicProviderConfig,
    BulkheadPolicy,
    LatencySpec,
    LocalProviderConfig,
    OpenAIProviderConfig,
    ProviderConfig,
    SimulatedProviderConfig,
)
from bastion.config.retrieval import (
    ChunkingConfig,
    EmbedderConfig,
    RetrievalConfig,
    SearchConfig,
)
from bastion.config.root import SUPPORTED_VERSIONS, BastionConfig, RouteConfig, ServerConfig
from bastion.config.tasks import TaskConfig

__all__ = [
    "SUPPORTED_VERSIONS",
    "AdmissionConfig",
    "AnswerConfig",
    "AnthropicProviderConfig",
    "AuthConfig",
    "BastionConfig",
    "BreakerPolicy",
    "Budget",
    "BudgetsConfig",
    "BulkheadPolicy",
    "CacheConfig",
    "ChunkingConfig",
    "ConfigError",
    "ContentLoggingConfig",
    "EmbedderConfig",
    "IdempotencyConfig",
    "JournalConfig",
    "LatencySpec",
    "LedgerConfig",
    "LimitsConfig",
    "LoadedConfig",
    "LocalProviderConfig",
    "ModelAlias",
    "ObservabilityConfig",
    "OpenAIProviderConfig",
    "Price",
    "ProviderConfig",
    "RateLimit",
    "RetrievalConfig",
    "RouteConfig",
    "SearchConfig",
    "ServerConfig",
    "SimulatedProviderConfig",
    "StateConfig",
    "TargetConfig",
    "TaskConfig",
    "TracingConfig",
    "load_config",
    "parse_config",
    "read_secret",
]
