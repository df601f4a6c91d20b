"""ResMem (residual memorization, arXiv 2302.01576): a base network plus a kNN regressor on its residuals.

Importing this package is cheap: torch and faiss load only in the modules that need them.
"""

from resmem.core import neighbor_weights, residuals, resmem_predict, resmem_scores, softmax
from resmem.engine import sweep_correct
from resmem.estimator import ResMem

__all__ = ["ResMem", "neighbor_weights", "residuals", "resmem_predict", "resmem_scores", "softmax", "sweep_correct"]
__version__ = "0.1.0"
