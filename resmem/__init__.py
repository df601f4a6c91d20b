"""ResMem (residual memorization, arXiv 2302.01576): a base network plus a kNN regressor on its residuals.

Importing this package is cheap: torch, faiss and scikit-learn load only in the modules that need them, and the
estimators (`ResMem`, `ResMemClassifier`, `ResMemRegressor`) on first use.
"""

from resmem.core import neighbor_weights, residuals, resmem_predict, resmem_scores, softmax
from resmem.engine import sweep_correct

__all__ = ["ResMem", "ResMemClassifier", "ResMemRegressor", "neighbor_weights", "residuals", "resmem_predict",
           "resmem_scores", "softmax", "sweep_correct"]  # fmt: skip
__version__ = "0.1.0"
ESTIMATORS = {"ResMem": "resmem.estimator", "ResMemClassifier": "resmem.wrappers", "ResMemRegressor": "resmem.wrappers"}


def __getattr__(name: str):
    if name in ESTIMATORS:
        import importlib

        return getattr(importlib.import_module(ESTIMATORS[name]), name)
    raise AttributeError(f"module 'resmem' has no attribute {name!r}")
