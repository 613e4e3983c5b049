import os
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


def test_progress_in_a_log_is_a_line_per_interval_not_a_bar_per_tick(monkeypatch, capsys):
    """stderr not a terminal: tqdm's bars wait LOG_INTERVAL_S between redraws (a user's setting wins),
    and a training prints one plain line per interval plus one at the end."""
    from types import SimpleNamespace

    from diffinject import quiet

    monkeypatch.setattr(quiet, "stderr_is_terminal", lambda: False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # recorded, so what the code sets is undone after the test
    monkeypatch.delenv("TQDM_MININTERVAL")
    quiet.throttle_progress_in_logs()
    assert os.environ["TQDM_MININTERVAL"] == str(quiet.LOG_INTERVAL_S)
    monkeypatch.setenv("TQDM_MININTERVAL", "2")
    quiet.throttle_progress_in_logs()
    assert os.environ["TQDM_MININTERVAL"] == "2"

    from diffinject import progress as classifier

    clock = iter(range(0, 1000, 10))  # every call to the clock moves 10 s on
    monkeypatch.setattr(classifier.time, "monotonic", lambda: next(clock))
    trainer = SimpleNamespace(is_global_zero=True, max_epochs=-1, max_steps=100, current_epoch=0, global_step=0,
                              progress_bar_metrics={"train/loss": 0.5})
    progress = classifier.LogLineProgress(interval_s=30)
    progress.on_train_start(trainer, None)
    for step in range(1, 11):
        trainer.global_step = step
        progress.on_train_batch_end(trainer)
    progress.on_train_end(trainer, None)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4  # ~100 s of steps at one clock read each: three interval lines and the last
    assert lines[-1] == "  epoch 1, step 10/100 train/loss 0.5"


def test_a_terminal_keeps_tqdms_own_interval(monkeypatch):
    from diffinject import quiet

    monkeypatch.setattr(quiet, "stderr_is_terminal", lambda: True)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # recorded, so what the code sets is undone after the test
    monkeypatch.delenv("TQDM_MININTERVAL")
    quiet.throttle_progress_in_logs()
    assert "TQDM_MININTERVAL" not in os.environ


def test_the_cli_sets_the_interval_before_anything_imports_tqdm():
    """tqdm reads TQDM_MININTERVAL once, when it is imported: the CLI module must not import it."""
    import subprocess
    import sys

    code = "import sys, diffinject.cli; print('tqdm' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_the_last_line_of_an_epoch_run_names_the_last_epoch_not_the_next(capsys):
    """Lightning has counted one epoch past max_epochs when training ends; the last line says 3/3."""
    from types import SimpleNamespace

    from diffinject import progress as classifier

    trainer = SimpleNamespace(is_global_zero=True, max_epochs=3, max_steps=-1, current_epoch=3, global_step=30,
                              progress_bar_metrics={})
    classifier.LogLineProgress(interval_s=30).on_train_end(trainer, None)
    assert capsys.readouterr().err.splitlines() == ["  epoch 3/3, step 30"]
