"""Built-in strategy recipes (installed as ``sparseattn.strategies``); the YAML files live in ``recipes/``."""
from sparseattn.config import builtin_recipes

__all__ = ["builtin_recipes"]
