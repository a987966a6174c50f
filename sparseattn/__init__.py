"""sparseattn: a research framework for sparse attention in video diffusion transformers."""
import os as _os

# In a source checkout, `strategies/`, `clustering/` and `kernels/` sit beside this folder and are installed as
# subpackages; let them resolve as `sparseattn.<name>` when the checkout itself is on sys.path too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_checkout, "clustering", "__init__.py")
):
    __path__.append(_checkout)  # noqa: F821  (module attribute of a package)

from .context import AttentionContext, StateCache  # noqa: E402
from .interfaces import (  # noqa: E402
    BlockMask,
    BudgetController,
    Clusterer,
    KMeansResult,
    Layout,
    Permuter,
    SparseKernel,
    TokenIdentifier,
)
from .registry import available, get, register  # noqa: E402
from .strategy import AttentionPlan, DenseSchedule, Strategy, load_strategy  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "AttentionContext",
    "AttentionPlan",
    "BlockMask",
    "BudgetController",
    "Clusterer",
    "DenseSchedule",
    "KMeansResult",
    "Layout",
    "Permuter",
    "SparseKernel",
    "StateCache",
    "Strategy",
    "TokenIdentifier",
    "available",
    "get",
    "load_strategy",
    "register",
]
