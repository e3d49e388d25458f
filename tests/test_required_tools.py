"""A tool a test needs and cannot find: skipped on a user's machine, a failure on CI."""
import pytest

from tests.conftest import missing


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_tool_fails_on_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="chromium"):
        missing("Debian's chromium is not installed")
