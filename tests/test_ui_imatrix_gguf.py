"""The Imatrix tab's GGUF: the session's matrix through llama.cpp's own llama-quantize --imatrix,
measured by llama-perplexity; where the tools are absent, a message that says how to get them."""
from pathlib import Path

import pytest

from engine.errors import CalibscopeError
from engine.imatrix import llamacpp
from tests.conftest import missing
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.sections.imatrix_gguf import GgufForm, make_gguf
from ui.state import Session
from ui.tabs.imatrix import CollectForm, collect


def test_without_the_tools_the_message_says_how_to_get_them(monkeypatch):
    monkeypatch.setattr("ui.sections.imatrix_gguf.tools_folder", lambda: None)
    with pytest.raises(CalibscopeError, match=r"python -m bench._llamacpp.*LLAMA_CPP_BIN"):
        make_gguf(GgufForm(matrix="#1"), Session(), CONTEXT, Recorder())


def test_an_unknown_type_is_refused_before_any_work(monkeypatch):
    with pytest.raises(CalibscopeError, match="GGUF type 'Q9_Z' is not offered"):
        llamacpp.imatrix_gguf(None, None, "Q9_Z", Path("held-out.txt"), Path("out"))


@pytest.mark.slow
def test_the_builtin_models_matrix_makes_a_gguf_that_llama_perplexity_measures():
    if llamacpp.tools_folder() is None:
        missing("llama.cpp's tools (python -m bench._llamacpp)")
    session = load(model="builtin:gemma-3-270m", builtin_name="mixed")["session"]
    session = build(session, nsamples=8, length=128, edges="64, 128")["session"]
    session = collect(CollectForm(batch_size=4), session, CONTEXT, Recorder())["session"]
    label = next(iter(session.imatrices))
    result = make_gguf(GgufForm(matrix=label, kind="IQ2_XS", held_out="mixed (held-out 10%)", chunks=2), session, CONTEXT,
                       Recorder())
    assert "IQ2_XS GGUF with this importance matrix" in result["status"]
    assert "llama-quantize refuses this type without a matrix" in result["status"]  # IQ2_XS needs one
    [path] = result["files"]
    assert Path(path).stat().st_size > 50 * 2**20 and Path(path).read_bytes()[:4] == b"GGUF"
    again = make_gguf(GgufForm(matrix=label, kind="IQ2_XS", held_out="mixed (held-out 10%)", chunks=2), session, CONTEXT,
                      Recorder())
    assert again["status"].startswith("**Unchanged since the last click**")


def test_the_held_out_text_holds_the_chunks_measured_and_little_more(tmp_path):
    from engine.models.tiny import byte_tokenizer

    tokenizer = byte_tokenizer()
    documents = [f"document {i} " * 40 for i in range(100)]  # 440 bytes (tokens) each: 3 hold 1,126
    written = llamacpp.write_held_out(tokenizer, documents, 2, tmp_path / "held-out.txt").read_text()
    tokens = len(tokenizer(written, add_special_tokens=False).input_ids)
    assert 2 * llamacpp.CONTEXT * 1.1 <= tokens < 2 * llamacpp.CONTEXT * 1.1 + 500
    assert written.startswith(documents[0]) and documents[2] in written and documents[3] not in written
    everything = llamacpp.write_held_out(tokenizer, documents[:2], 8, tmp_path / "short.txt").read_text()
    assert everything == "\n\n".join(documents[:2])  # too short: all of it (llama-perplexity says what it lacks)


@pytest.mark.slow
def test_a_llama_cpp_gguf_reads_back_into_the_model_by_its_parameter_names(tmp_path):
    """The float GGUF made for llama-quantize holds exactly the weights calibscope loads; its Q8_0
    requantization changes the linear weights and the embedding (by half a step of absmax / 127 per
    block of 32, and the block's fp16 scale's rounding, at most 127 x 2^-11 steps) and nothing else."""
    if llamacpp.tools_folder() is None:
        missing("llama.cpp's tools (python -m bench._llamacpp)")
    import torch

    from engine import ModelSpec, load_model

    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype="float32"))
    source = llamacpp.float_gguf(loaded)
    params = dict(loaded.model.named_parameters())
    back = llamacpp.gguf_weights(source, loaded.model)
    assert "model.embed_tokens.weight" in back and "lm_head.weight" not in back  # tied: the embedding once
    assert all(torch.equal(value, params[name]) for name, value in back.items())
    q8 = llamacpp.gguf_weights(llamacpp.quantize(source, tmp_path / "q8.gguf", "Q8_0"), loaded.model)
    changed = {name for name, value in q8.items() if not torch.equal(value, params[name])}
    assert changed and all(name.endswith("_proj.weight") or name == "model.embed_tokens.weight" for name in changed)
    for name in changed:
        step = params[name].abs().reshape(params[name].shape[0], -1, 32).amax(-1, keepdim=True) / 127
        assert ((q8[name] - params[name]).reshape(step.shape[0], -1, 32).abs() <= 0.57 * step).all(), name
