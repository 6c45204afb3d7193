"""Credit assignment: ``estimate(name, batch, **options) -> Advantages``.

Every module in this package registers its estimators on import; adding an estimator is adding
one file with a function decorated by ``register_estimator``.
"""

import importlib
import pkgutil

from agentrl.credit.base import (
    ESTIMATORS,
    RESPONSE_END,
    TOKEN_STATS,
    Advantages,
    EstimatorInfo,
    MissingInputError,
    ValueHeadSpec,
    available_estimators,
    estimate,
    estimator_info,
    register_estimator,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "ops"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "ESTIMATORS",
    "RESPONSE_END",
    "TOKEN_STATS",
    "Advantages",
    "EstimatorInfo",
    "MissingInputError",
    "ValueHeadSpec",
    "available_estimators",
    "estimate",
    "estimator_info",
    "register_estimator",
]
