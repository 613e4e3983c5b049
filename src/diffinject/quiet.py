"""What reaches the terminal: Lightning notices a user of this pipeline cannot act on are kept out,
and progress written to a log file (not a terminal) comes as a line every LOG_INTERVAL_S instead of a
bar redrawn on every tick (a 1000-step bar wrote ~1000 updates into `dvc repro`'s log)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Seconds between progress lines in a log file (DIFFINJECT_LOG_INTERVAL_S sets another); a terminal
# keeps tqdm's live bar.
LOG_INTERVAL_S = float(os.environ.get("DIFFINJECT_LOG_INTERVAL_S", 30.0))

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


def hide_refused_pickle_warnings() -> None:
    """torch's weights-only unpickler warns, in several lines, about the protocol of a pickle it is
    about to refuse (a classifier .pt, a diffusers .bin); the one-line error that follows says all a
    user needs. A filter of the CLI's, not of the loaders, so the stages' DVC deps stay as they are."""
    warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def throttle_progress_in_logs() -> None:
    """Every tqdm bar (ours, diffusers') redraws at most every LOG_INTERVAL_S when stderr is a file or
    a pipe; a TQDM_MININTERVAL the user set wins. tqdm reads it when it is first imported, so the CLI
    calls this before importing a stage (and this module imports nothing that imports tqdm)."""
    if not stderr_is_terminal():
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_INTERVAL_S))
