"""One road into quantization: every caller (the Quantize tab, the Export tab's remake, Compare, the
CLI's runs, the benches) reaches the solvers through ``engine.quant.quantize``, whose check is the
only place that says what a scheme needs."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from engine.errors import CalibscopeError
from engine.experiments import ComparisonSpec, compare
from engine.quant import PRESETS, Calibrated, Quantization, entry, evaluation_windows
from engine.quant.request import Quantization as RequestQuantization
from tests.test_cli_run import run as run_cli
from tests.test_cli_run import write_config
from tests.test_ui_quantize import HELD, calibrated_session  # noqa: F401  (fixture)
from tests.ui_helpers import CONTEXT, Recorder
from ui.sections.quantized_model import CheckpointForm, write_checkpoint
from ui.tabs.quantize import CUSTOM, SCHEME_WIDGETS, QuantizeForm, preset_widgets, run_quantization

ROOT = Path(__file__).resolve().parents[1]
BEHIND_THE_ENTRY = {"plan_quantization", "gptq_block_by_block", "quantized_weights", "quantize_groups", "gptq_batch"}
# the modules that are the road itself: the entry, the method modules it dispatches to, and their own helpers
ROAD = {"engine/quant/entry.py", "engine/quant/plan.py", "engine/quant/block_gptq.py", "engine/quant/methods/matrices.py",
        "engine/quant/methods/gptq.py", "engine/quant/methods/experts.py", "engine/quant/methods/rotation.py"}


def names_used(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    return used


def test_nothing_outside_the_road_calls_what_lies_behind_the_entry():
    bypasses = [f"{path.relative_to(ROOT)} uses {sorted(names_used(path) & BEHIND_THE_ENTRY)}"
                for folder in ("engine", "ui", "bench") for path in sorted((ROOT / folder).rglob("*.py"))
                if str(path.relative_to(ROOT)) not in ROAD and names_used(path) & BEHIND_THE_ENTRY]
    assert bypasses == []


@pytest.fixture
def counted(monkeypatch):
    """Calls reaching the solvers through the entry, and checks made, by kind."""
    calls: Counter = Counter()

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(entry, "plan_quantization", counting("at once", entry.plan_quantization))
    monkeypatch.setattr(entry, "gptq_block_by_block", counting("sequential", entry.gptq_block_by_block))
    monkeypatch.setattr(RequestQuantization, "check", counting("checked", RequestQuantization.check))
    return calls


def quantize_tab(session, scheme_name, **fields):
    scheme = dict(zip(SCHEME_WIDGETS, preset_widgets(scheme_name)))
    form = QuantizeForm(**{**scheme, "source": HELD, "length": 64, "windows": 2, "preset": scheme_name, **fields})
    return run_quantization(form, session, CONTEXT, Recorder())


def test_the_quantize_and_export_tabs_go_through_the_entry(calibrated_session, counted):  # noqa: F811
    # per channel: the tiny model's widths (32, 37) share no group size, and the run is written as a checkpoint
    session = quantize_tab(calibrated_session, "W4 g128 GPTQ", preset=CUSTOM, group="per channel", sensitivity="none")["session"]
    assert counted == {"at once": 1, "checked": 2}  # checked before the step is timed, and by the entry
    session = quantize_tab(session, "W4 g128 GPTQ", sequential=True, sensitivity="none")["session"]
    assert counted["sequential"] == 1
    counted.clear()
    write_checkpoint(CheckpointForm(run=1, check=False), session, CONTEXT, Recorder())
    assert counted == {"at once": 1, "checked": 1}  # the remake is the entry's too


def test_compare_and_the_cli_go_through_the_entry(calibrated_session, counted, tiny_llama, topical_corpus, tmp_path):  # noqa: F811
    evaluation = evaluation_windows(tiny_llama.tokenizer, [str(t) for t in topical_corpus["text"][:4]], 32, 2, "held")
    spec = ComparisonSpec(strategies=("random",), seeds=1, counts=(3,), length=32, schemes=("W4 g128 RTN", "W4 g128 GPTQ"))
    compare(tiny_llama, topical_corpus, spec, [evaluation])
    assert counted == {"at once": 2, "checked": 2}
    counted.clear()
    assert run_cli(write_config(tmp_path, stats=None, quantize=[{"scheme": "W4 g128 GPTQ"},
                                                                {"scheme": "W4 g128 GPTQ", "sequential": True}])) == 0
    assert counted == {"at once": 1, "sequential": 1, "checked": 2}


def test_what_a_scheme_needs_is_said_once_in_the_same_words_everywhere(calibrated_session, tiny_llama):  # noqa: F811
    gptq = PRESETS["W4 g128 GPTQ"]
    expected = Quantization(gptq).refusal(Calibrated())
    with pytest.raises(CalibscopeError) as from_engine:
        entry.quantize(tiny_llama, gptq, Calibrated())
    no_hessians = calibrated_session.with_calibration(calibrated_session.calibration)
    with pytest.raises(CalibscopeError) as from_tab:
        quantize_tab(no_hessians, "W4 g128 GPTQ")
    assert str(from_engine.value) == str(from_tab.value) == expected
    assert "Hessians tab" in expected and "[hessians]" in expected
