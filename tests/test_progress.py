"""Progress: a bar on a terminal, a log line a minute elsewhere, nothing with --quiet."""

from __future__ import annotations

import logging

import pytest

import fieldseg.progress as progress_module
from fieldseg.progress import progress, set_progress_enabled


@pytest.fixture(autouse=True)
def _terminal_decides() -> None:
    set_progress_enabled(None)
    yield
    set_progress_enabled(None)


def _run(n: int, **kwargs: object) -> None:
    """Count to ``n`` as predict does: ``update`` and ``set_postfix`` (which redraws at once)."""
    with progress(range(n), total=n, desc="predict", unit="chip", **kwargs) as bar:  # type: ignore[arg-type]
        for i in range(n):
            bar.update(1)
            bar.set_postfix(fields=i)


def test_without_a_terminal_progress_goes_to_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress_module, "_is_terminal", lambda: False)
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="fieldseg"):
        _run(5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[-1].startswith("predict: 5/5 chip (100 %)")
    assert sum("(100 %)" in line for line in lines) == 1
    assert all("\r" not in line and "|" not in line for line in lines)  # no bar, no returns


def test_work_done_within_a_minute_logs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress_module, "_is_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="fieldseg"):
        _run(1000)
    assert caplog.records == []


@pytest.mark.parametrize(("quiet", "show"), [(True, True), (False, False)])
def test_quiet_or_hidden_progress_shows_nothing(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    quiet: bool,
    show: bool,
) -> None:
    monkeypatch.setattr(progress_module, "_is_terminal", lambda: False)
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)
    set_progress_enabled(False if quiet else None)
    with caplog.at_level(logging.INFO, logger="fieldseg"):
        _run(5, show=show)
    assert caplog.records == [] and capsys.readouterr().err == ""


def test_a_line_at_99_5_percent_is_not_taken_for_the_last(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress_module, "_is_terminal", lambda: False)
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="fieldseg"):
        _run(1000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1].startswith("predict: 1000/1000 chip (100 %)")
