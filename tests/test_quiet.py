import logging
import warnings

import pytest

from diffinject.quiet import quiet_lightning


@pytest.mark.parametrize("name", ["lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"])
def test_the_advert_is_dropped_and_other_notices_kept(name, caplog):
    quiet_lightning()
    quiet_lightning()  # idempotent: one filter
    logger = logging.getLogger(name)
    assert len([f for f in logger.filters if type(f).__name__ == "_DropAdvert"]) == 1
    with caplog.at_level(logging.INFO, logger=name):
        logger.info("💡 Tip: For seamless cloud logging ... try installing [litlogger](https://pypi.org/project/litlogger/)")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_only_the_leafspec_deprecation_is_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
