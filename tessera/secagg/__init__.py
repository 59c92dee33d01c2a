"""Secure aggregation: the coordinator learns only the sum of the nodes' vectors.

Pairwise masking with double masking and t-of-n Shamir recovery of dropouts
(Bonawitz et al., CCS 2017). Shared by node and coordinator; imports neither.
See docs/secure-aggregation.md.
"""

from tessera.secagg import crypto, shamir
from tessera.secagg.protocol import (
    MAX_ABS_INPUT,
    Aborted,
    Refused,
    SecAggClient,
    SecAggError,
    SecAggResult,
    SecAggServer,
    Stage,
    validate_session,
)

__all__ = [
    "MAX_ABS_INPUT",
    "Aborted",
    "Refused",
    "SecAggClient",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "Stage",
    "crypto",
    "shamir",
    "validate_session",
]
