"""Output contracts: a model's answer is parsed, schema-checked and rule-checked before it is a
success; an invalid answer is repaired once, then the next target is tried, then refused."""

from bastion.pipeline.contract.output import Checked, OutputContract
from bastion.pipeline.contract.rules import RuleContext, RuleSpec, register_rule
from bastion.pipeline.contract.schema import Violation, compile_schema

__all__ = ["Checked", "OutputContract", "RuleContext", "RuleSpec", "Violation",
           "compile_schema", "register_rule"]
