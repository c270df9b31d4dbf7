"""The baselines sMoE is compared with, each registered by name (docs/baselines.md).

Importing this package registers every one: ``hpa``, ``hpa-stock``, ``kpa``, ``openfaas``
(platform autoscalers), ``queueing``, ``oracle``, ``static-peak`` (queueing sizing),
``floor`` (the cost lower bound), ``elasticmoe`` and ``faasconf`` (re-implementations).
"""

from smoelib.policy.baselines import (  # noqa: F401  (registration)
    elastic,
    faasconf,
    floor,
    platform,
    queueing,
)
