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


def apply(target, strategy, **options):
    """Install a sparse attention strategy on a diffusers video pipeline or transformer (Wan 2.1, HunyuanVideo).

    ``with sparseattn.apply(pipe, "svg2"):`` — see `sparseattn.integrations.diffusers.apply` for the options. Needs
    the ``diffusers`` extra, which is imported here, on first use, never by ``import sparseattn``.
    """
    from .integrations.diffusers import apply as apply_to_diffusers

    return apply_to_diffusers(target, strategy, **options)


def remove(target) -> None:
    """Undo `apply` on a pipeline, transformer, or the patch `apply` returned."""
    from .integrations.diffusers import remove as remove_from_diffusers

    remove_from_diffusers(target)


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
    "apply",
    "available",
    "get",
    "load_strategy",
    "register",
    "remove",
]
