"""One rule for deriving seeds, used by training (data order, per-step noise) and sampling
(members, windows, initialisations) alike."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from a run's ``seed`` and integer ``keys`` (a member, a rank, a step, an
    initialisation time in seconds...), mixed by numpy's ``SeedSequence``: any piece of a run
    draws independent noise that it reproduces alone, whatever else runs beside it. Integers
    are taken modulo ``2**63``."""
    entropy = [int(seed) & (2**63 - 1), *(int(k) & (2**63 - 1) for k in keys)]
    state = np.random.SeedSequence(entropy)
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))
