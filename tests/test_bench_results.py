"""Every committed benchmark result can be traced: the commit it measured (and whether the tree was
dirty, where the run recorded it), the model's dtype and device, and the inputs it reused from a
cache; quick runs are never among them."""
import json

import pytest

from tests.conftest import REPO

RESULTS = sorted((REPO / "bench" / "results").glob("*.json"))


def test_there_are_results():
    assert len(RESULTS) >= 10


@pytest.mark.parametrize("path", RESULTS, ids=[path.stem for path in RESULTS])
def test_a_result_says_what_it_measured_and_from_what(path):
    result = json.loads(path.read_text())
    assert len(result["source"]["commit"]) == 40 and result["source"]["dirty"] in (True, False, None)
    assert result["dtype"] and result["device"] and isinstance(result["reused"], dict)
    assert result["quick"] is False and isinstance(result["met"], bool)
    assert "native_bfloat16" in result["machine"]
