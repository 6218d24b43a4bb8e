"""Build provider adapters from their config, one module per kind."""

from __future__ import annotations

from typing import Any

from bastion.config import (
    AnthropicProviderConfig,
    LocalProviderConfig,
    OpenAIProviderConfig,
    SimulatedProviderConfig,
)
from bastion.providers.base import Provider


def build_provider(name: str, config: Any) -> Provider:
    if isinstance(config, OpenAIProviderConfig):
        from bastion.providers.openai_compat import OpenAICompatibleProvider

        return OpenAICompatibleProvider(name, config)
    if isinstance(config, AnthropicProviderConfig):
        from bastion.providers.anthropic import AnthropicProvider

        return AnthropicProvider(name, config)
    if isinstance(config, LocalProviderConfig):
        from bastion.providers.local import LocalProvider

        return LocalProvider(name, config)
    if isinstance(config, SimulatedProviderConfig):
        from bastion.providers.simulated import SimulatedProvider

        return SimulatedProvider(name, config)
    raise TypeError(f"unknown provider config {type(config).__name__}")
