"""Registry of op-rewrite rules.

A rule replaces the lowering of one Darknet construct (a section kind, an activation, or a
detection head) with a form a TFLite target supports. Rules are applied by rebuilding the
model from the cfg with the rule consulted first (see ``builder.BuildContext.rule_for``),
so a rewrite can never leave the graph half-patched. Each rule lives in its own module in
this package and registers itself on import.
"""
from __future__ import annotations

import importlib
import pkgutil

from darknet2tflite.model.rule import Rule

__all__ = ["RULES", "Rule", "load_rules", "register"]

RULES: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    if rule.name in RULES:
        raise ValueError(f"duplicate rewrite rule {rule.name}")
    RULES[rule.name] = rule
    return rule


def load_rules() -> dict[str, Rule]:
    """Import every rule module in this package (each registers itself)."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return RULES
