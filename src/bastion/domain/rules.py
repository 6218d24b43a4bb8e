"""Product rules as data: what config declares for an output beyond its schema.

Evaluation lives in ``bastion.pipeline.contract.rules``; these are only the validated shapes,
so config can parse them without importing the pipeline.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaxLength(_Rule):
    rule: Literal["max_length"]
    field: str
    max: int = Field(ge=0)


class MinLength(_Rule):
    rule: Literal["min_length"]
    field: str
    min: int = Field(ge=0)


class NonEmpty(_Rule):
    rule: Literal["non_empty"]
    field: str


class OneOf(_Rule):
    rule: Literal["one_of"]
    field: str
    values: list[Any] = Field(min_length=1)


class SubsetOf(_Rule):
    """Every value at ``field`` must be one of the request-supplied values named ``source``."""

    rule: Literal["subset_of"]
    field: str
    source: str


class Custom(_Rule):
    rule: Literal["custom"]
    name: str


RuleSpec = Annotated[MaxLength | MinLength | NonEmpty | OneOf | SubsetOf | Custom,
                     Field(discriminator="rule")]
