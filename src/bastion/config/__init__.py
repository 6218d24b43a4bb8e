"""The one versioned config file (see ``loader``); sections live in one module each."""

from bastion.config.loader import (
    ConfigError,
    LoadedConfig,
    load_config,
    parse_config,
    read_secret,
)
from bastion.config.models import BreakerPolicy, ModelAlias, TargetConfig
from bastion.config.providers import (
    AnthropicProviderConfig,
    BulkheadPolicy,
    LatencySpec,
    LocalProviderConfig,
    OpenAIProviderConfig,
    ProviderConfig,
    SimulatedProviderConfig,
)
from bastion.config.root import SUPPORTED_VERSIONS, BastionConfig, RouteConfig, ServerConfig
from bastion.config.tasks import TaskConfig

__all__ = [
    "SUPPORTED_VERSIONS",
    "AnthropicProviderConfig",
    "BastionConfig",
    "BreakerPolicy",
    "BulkheadPolicy",
    "ConfigError",
    "LatencySpec",
    "LoadedConfig",
    "LocalProviderConfig",
    "ModelAlias",
    "OpenAIProviderConfig",
    "ProviderConfig",
    "RouteConfig",
    "ServerConfig",
    "SimulatedProviderConfig",
    "TargetConfig",
    "TaskConfig",
    "load_config",
    "parse_config",
    "read_secret",
]
