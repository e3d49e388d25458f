"""A stand-in for the Hugging Face hub's answers (tests run offline): what model_info says of a
repository (its commit, its files with their sizes, its safetensors parameter count), its config.json,
and a download that records what it was asked for."""
from __future__ import annotations

from types import SimpleNamespace

from engine.models import admission

LLAMA_CONFIG = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 16,
                "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192}


class FakeHub:
    def __init__(self) -> None:
        self.models: dict[str, tuple[SimpleNamespace, dict]] = {}
        self.downloads: list[tuple[str, str, tuple[str, ...]]] = []

    def add(self, name: str, parameters: int | None, config: dict | None = None, files: dict[str, int] | None = None,
            sha: str = "0" * 40) -> None:
        files = files or {"config.json": 700, "model.safetensors": (parameters or 0) * 2, "tokenizer.json": 9_000_000,
                          "pytorch_model.bin": 10**12, "images/diagram.png": 10**9}
        info = SimpleNamespace(sha=sha, safetensors=SimpleNamespace(total=parameters) if parameters else None,
                               siblings=[SimpleNamespace(rfilename=file, size=size) for file, size in files.items()])
        self.models[name] = (info, config or LLAMA_CONFIG)

    def install(self, monkeypatch) -> FakeHub:
        def info(name, revision):
            if name not in self.models:
                raise admission.explain_load_failure(name, OSError("404 Client Error: Repository Not Found"))
            return self.models[name][0]

        monkeypatch.setattr(admission, "_hub_info", info)
        monkeypatch.setattr(admission, "_hub_config", lambda name, found: self.models[name][1])
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub, "snapshot_download",
                            lambda name, revision=None, allow_patterns=(): self.downloads.append(
                                (name, revision, tuple(allow_patterns))))
        return self
