"""The launched app under load: 8 concurrent visitors through gradio_client, each with its own
results (each visitor's layer statistics equal a run of the same flow alone), the page still
answering, queued visitors told their position; and the shared-Space refusals as a visitor meets
them. Everything stays on the loopback interface and stops by itself."""
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.browser import served_app
from tests.fake_hub import FakeHub
from ui.limits import Limits

pytest.importorskip("gradio_client")
from gradio_client import Client
from gradio_client.exceptions import ValidationError

VISITORS = 8
DEADLINE_S = 300  # the whole test gives up (and fails) after this, never hangs
LOAD = ["tiny-random-llama", "auto", "auto", "auto", "builtin", "python-docs", "train", "wikitext2", "", "train", "", 16, None]


def build_inputs(samples: int, seed: int) -> list:
    return ["random", samples, 96, "64, 128", "equal", "joined", seed, True, True, 16]


STATS = [["Linear"], "", False, "inputs", "99.9", True, 6.0, 4]


def visitor(url: str, number: int, queue_seen: list) -> dict:
    """One visitor's whole flow; returns what its own pages said."""
    client = Client(url, verbose=False)
    samples = 3 + number  # every visitor asks for a different set, so mixing would show
    client.predict(*LOAD, api_name="/load_model_and_corpus")
    built = client.predict(*build_inputs(samples, seed=number), api_name="/build_calibration_set")[0]
    job = client.submit(*STATS, api_name="/collect_statistics")
    while not job.done():
        status = job.status()
        if status.rank is not None and status.rank > 0:
            queue_seen.append(status.rank)
        time.sleep(0.05)
    collected, _ranges, table = job.result()[:3]
    return {"samples": samples, "built": built, "collected": collected, "table": _rows(table)}


def _rows(table: dict) -> dict[str, list]:
    """The layer table's rows by layer key: what the hooks recorded for this visitor."""
    table = table.get("value", table)  # the table comes as an update of the component
    headers = table["headers"]
    return {row[headers.index("key")]: row for row in table["data"]}


def tokens_in(text: str) -> int:
    return int(re.search(r"([\d,]+) tokens", text).group(1).replace(",", ""))


def test_eight_concurrent_visitors_get_their_own_results_and_the_app_stays_responsive():
    queue_seen: list[int] = []
    with served_app(limits=Limits(), default_model="tiny-random-llama") as url:
        with ThreadPoolExecutor(VISITORS) as pool:
            futures = [pool.submit(visitor, url, number, queue_seen) for number in range(VISITORS)]
            answers = []
            while not all(f.done() for f in futures):  # the page keeps answering while visitors work
                with urllib.request.urlopen(url, timeout=60) as page:
                    answers.append(page.status)
                time.sleep(0.2)
            results = [f.result(timeout=DEADLINE_S) for f in futures]
        # the same flows one at a time: what each visitor's hooks recorded must not depend on the others
        alone = [visitor(url, number, []) for number in range(VISITORS)]
    for result, reference in zip(results, alone):
        assert result["table"] == reference["table"], (result["samples"], result["table"], reference["table"])
    assert len({str(r["table"]) for r in results}) == VISITORS  # every visitor's set gives other ranges
    for result in results:
        assert result["built"].startswith(f"**Built** {result['samples']} samples"), result
        assert f"over {result['samples']} samples, {tokens_in(result['built']):,} tokens" in result["collected"], result
    assert len({tokens_in(r["built"]) for r in results}) > 1
    assert len(answers) >= 2 and set(answers) == {200}, answers  # served again and again during the heavy work
    assert queue_seen, "with 8 visitors and 2 heavy slots, some visitors should have been told their queue position"


def _error_of(client: Client, *args, api_name: str) -> str:
    """A refused step answers on the field at fault, before it is queued (a ValidationError here), or
    with its status line saying why (the first output)."""
    try:
        status = client.predict(*args, api_name=api_name)[0]
    except ValidationError as refused:
        return str(refused)
    assert status.startswith("**Not done:**"), status
    return status


def test_shared_space_refusals_reach_the_visitor(tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    hub.add("someorg/custom-code-model", 100_000_000, config={"model_type": "custom_thing", "auto_map": {"AutoModel": "x.Y"}})
    with served_app(limits=Limits.shared_space(), default_model="tiny-random-llama") as url:
        client = Client(url, verbose=False)
        local = _error_of(client, str(tmp_path), *LOAD[1:], api_name="/load_model_and_corpus")
        assert "is not a Hugging Face id: this shared Space reads nothing of its own disk" in local
        remote = _error_of(client, "someorg/custom-code-model", *LOAD[1:], api_name="/load_model_and_corpus")
        assert "needs to run its own code" in remote and "never" in remote
        client.predict(*LOAD, api_name="/load_model_and_corpus")
        huge = _error_of(client, *build_inputs(100_000, 0), api_name="/build_calibration_set")
        assert "more than the 256 allowed on this shared Space" in huge
        built = client.predict(*build_inputs(4, 0), api_name="/build_calibration_set")[0]
        assert built.startswith("**Built** 4 samples")  # the app is still up and serving this visitor
