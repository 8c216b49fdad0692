"""Progress: a bar on a terminal, a log line a minute elsewhere, nothing with --quiet."""

from __future__ import annotations

import logging

import pytest

import fieldseg.progress as progress_module
from fieldseg.progress import progress, progress_shown, set_progress_enabled


@pytest.fixture(autouse=True)
def _in_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr is not a terminal (a batch job's log), and the terminal decides."""
    monkeypatch.setattr(progress_module, "_is_terminal", lambda: False)
    set_progress_enabled(None)
    yield
    set_progress_enabled(None)


@pytest.fixture
def every_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No minute between log lines: every refresh may log."""
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)


def _logged(caplog: pytest.LogCaptureFixture, n: int, **kwargs: object) -> list[str]:
    """The log lines of counting to ``n`` as predict does: ``update``, then ``set_postfix``
    (which redraws at once)."""
    with (
        caplog.at_level(logging.INFO, logger="fieldseg"),
        progress(range(n), total=n, desc="predict", unit="chip", **kwargs) as bar,  # type: ignore[arg-type]
    ):
        for i in range(n):
            bar.update(1)
            bar.set_postfix(fields=i)
    return [r.getMessage() for r in caplog.records]


@pytest.mark.usefixtures("every_refresh")
def test_without_a_terminal_progress_goes_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    lines = _logged(caplog, 5)
    assert lines and lines[-1].startswith("predict: 5/5 chip (100 %)")
    assert sum("(100 %)" in line for line in lines) == 1
    assert all("\r" not in line and "|" not in line for line in lines)  # no bar, no returns


def test_work_done_within_a_minute_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, 1000) == []


@pytest.mark.usefixtures("every_refresh")
@pytest.mark.parametrize(("quiet", "show"), [(True, True), (False, False)])
def test_quiet_or_hidden_progress_shows_nothing(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], quiet: bool, show: bool
) -> None:
    set_progress_enabled(False if quiet else None)
    assert _logged(caplog, 5, show=show) == [] and capsys.readouterr().err == ""


@pytest.mark.usefixtures("every_refresh")
def test_one_call_may_hide_or_show_progress_whatever_the_global_setting(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library call's ``show_progress``: for that call only, the global setting after."""
    with progress_shown(False):
        assert _logged(caplog, 5) == [] and capsys.readouterr().err == ""
    assert _logged(caplog, 5)  # back to the global setting: log lines here
    caplog.clear()
    set_progress_enabled(False)
    with progress_shown(True):
        _logged(caplog, 5)
        assert "5/5" in capsys.readouterr().err  # a bar, though bars are off globally
    with progress_shown(None):
        assert _logged(caplog, 5) == []  # None leaves the global setting


@pytest.mark.usefixtures("every_refresh")
def test_a_line_at_99_5_percent_is_not_taken_for_the_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert _logged(caplog, 1000)[-1].startswith("predict: 1000/1000 chip (100 %)")
