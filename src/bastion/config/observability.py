"""The ``observability`` section: the request journal, OpenTelemetry export, content logging.

Every default is what a production deployment should run with: the journal on (it is what
``/ui`` and ``bastion trace`` read), tracing off until an OTLP endpoint is configured, and no
content in any log unless explicitly sampled in.
"""

from __future__ import annotations

from pydantic import Field

from bastion.config.base import Strict


class JournalConfig(Strict):
    """The request journal: each finished request's metadata (the same fields as its
    ``request.completed`` log event), for the dashboard and ``bastion trace``."""

    enabled: bool = True
    #: Requests kept in memory per process (the dashboard's recent list when state is in
    #: memory only).
    recent: int = Field(default=2000, ge=10, le=1_000_000)
    #: Requests kept in the SQLite state file (all workers share it); the oldest go first.
    keep: int = Field(default=200_000, ge=100)
    #: How often new entries are written to the state file.
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)


class TracingConfig(Strict):
    """OpenTelemetry traces over OTLP/HTTP. With no endpoint here and none in
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, nothing is
    exported and nothing is built; a caller's ``traceparent`` is still passed upstream."""

    #: e.g. ``http://collector:4318/v1/traces``.
    otlp_endpoint: str | None = None
    #: Extra headers for the exporter (an API key for a hosted backend goes here via env).
    otlp_headers: dict[str, str] = Field(default_factory=dict)
    service_name: str = "bastion"
    #: Fraction of requests traced when the caller did not decide (a sampled ``traceparent``
    #: is always honoured).
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class ContentLoggingConfig(Strict):
    """Prompts and completions in the logs: off unless ``sample_rate`` > 0, and then only for
    that fraction of requests, each text cut at ``max_chars``. Secrets are still masked."""

    sample_rate: float = Field(default=0.0, ge=0, le=1)
    max_chars: int = Field(default=4000, ge=100, le=1_000_000)


class ObservabilityConfig(Strict):
    journal: JournalConfig = Field(default_factory=JournalConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    content_logging: ContentLoggingConfig = Field(default_factory=ContentLoggingConfig)
