"""The diff engine: compares a candidate's response with the primary's.

`Comparer` is what the proxy uses; `compare` with `RuleBook(...).for_endpoint(...)` is the
same comparison as a plain function.
"""

from shadowproxy.compare.engine import compare
from shadowproxy.compare.model import IDENTICAL, Comparison, Difference, Kind, Where, matching
from shadowproxy.compare.pool import Comparer
from shadowproxy.compare.rules import CompiledRules, RuleBook

__all__ = [
    "IDENTICAL",
    "Comparer",
    "Comparison",
    "CompiledRules",
    "Difference",
    "Kind",
    "RuleBook",
    "Where",
    "compare",
    "matching",
]
