"""Lightning notices a user of this pipeline cannot act on, kept out of every stage's output."""

from __future__ import annotations

import logging
import warnings

# Lightning's rank-zero logger: the module records under its own name, or under pytorch_lightning's
# when that standalone package is imported too (optuna-integration does), so both are filtered.
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")


class _DropAdvert(logging.Filter):
    """Lightning prints a "Tip" advertising its cloud logger at every Trainer construction."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_FILTER = _DropAdvert()


def quiet_lightning() -> None:
    """Drop Lightning's per-Trainer cloud-logger advert and the torch deprecation its pytree copy
    triggers on every fit (Lightning's code, not ours, uses the deprecated LeafSpec). Idempotent."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
