"""Which model a request may load, decided before any weight is downloaded or any other model is
evicted to make room for it.

Under a guard with model limits (a shared Space) a hub model is admitted from the hub's own
metadata and its config.json alone: its commit (the revision is pinned to it, so the repository
cannot change between the check and the load), its architecture (one transformers loads without
remote code), its files' sizes (what loading downloads) and its parameter count (the hub's
safetensors metadata, or the config's numbers: ``engine.models.size``). ``fetch`` then downloads
exactly the admitted files at that commit, within the disk quota, and trims the hub cache to its
budget. Locally (no limits) admission only passes the name through the policy.
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from engine import guard
from engine.errors import ModelLoadError, OverBudget
from engine.models.size import PACKAGED_PARAMETERS, config_file, is_packaged, parameters_from_config, read_config
from engine.models.sources import explain_load_failure, looks_like_path
from engine.specs import ModelSpec

log = logging.getLogger(__name__)

# what AutoTokenizer and AutoModelForCausalLM.from_pretrained read from a repository
FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
PICKLED = ("*.bin", "*.pt", "*.pth")  # only when a repository has no safetensors
GB = 1e9


@dataclass(frozen=True)
class Admitted:
    """A request that may be loaded: ``spec`` (a hub model's revision pinned to the commit checked),
    its ``parameters`` (0: not counted) and the ``files`` loading it downloads with their sizes."""

    spec: ModelSpec
    parameters: int = 0
    files: tuple[tuple[str, int], ...] = ()

    @property
    def download_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _wanted(names: list[str]) -> list[str]:
    patterns = FILES if any(fnmatch.fnmatch(name, "*.safetensors") for name in names) else FILES + PICKLED
    return [name for name in names if "/" not in name and any(fnmatch.fnmatch(name, p) for p in patterns)]


def _hub_info(name: str, revision: str | None):
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(name, revision=revision, files_metadata=True, timeout=20)
    except Exception as error:  # noqa: BLE001 - unknown id, gated, offline: the hub's errors vary; each is "cannot load"
        raise explain_load_failure(name, OSError(str(error))) from None


def _hub_config(name: str, info) -> dict:
    from huggingface_hub import hf_hub_download

    try:
        return read_config(Path(hf_hub_download(name, "config.json", revision=info.sha)))
    except (OSError, ValueError) as error:
        raise explain_load_failure(name, error) from error


def check_architecture(name: str, config: dict) -> None:
    """Refuse, before anything is downloaded or evicted, a config transformers cannot load as a causal
    LM without running the repository's own code."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind = config.get("model_type")
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        remote = " (it needs to run its own code, which calibscope never does)" if "auto_map" in config else ""
        raise ModelLoadError(f"'{name}' is a model of type {kind!r}, which transformers does not load as a causal language "
                             f"model{remote}. Pick a model whose architecture transformers supports natively.")


def admit(spec: ModelSpec) -> Admitted:
    """The request as it may be loaded under the guard in force, or ModelLoadError / OverBudget /
    Refused saying why not (nothing downloaded but the hub's metadata and, without safetensors
    metadata, config.json)."""
    current = guard.current()
    name = current.policy.model_name(spec.name)
    revision = current.policy.hub_word(spec.revision, "revision")
    spec = replace(spec, name=name, revision=revision)
    if is_packaged(name):
        return Admitted(spec, PACKAGED_PARAMETERS.get(name, 0))
    limits = current.models
    if limits.parameters is None and limits.download_bytes is None:
        return Admitted(spec)  # local: counted at load (the offload decision reads the config)
    if looks_like_path(name):
        config = read_config(config_file(name))
        check_architecture(name, config)
        return Admitted(spec, parameters_from_config(config))
    info = _hub_info(name, revision)
    config = _hub_config(name, info)
    check_architecture(name, config)
    counted = getattr(info.safetensors, "total", None) if info.safetensors is not None else None
    parameters = int(counted) if counted else parameters_from_config(config)
    if limits.parameters is not None and parameters > limits.parameters:
        raise ModelLoadError(f"'{name}' has {parameters / GB:,.2f} B parameters; this shared Space takes models up to "
                             f"{limits.parameters / GB:,.1f} B. Run calibscope locally (pip install calibscope) for larger "
                             "models.")
    sizes = {sibling.rfilename: int(sibling.size or 0) for sibling in info.siblings or ()}
    files = tuple((file, sizes[file]) for file in _wanted(sorted(sizes)))
    admitted = Admitted(replace(spec, revision=info.sha), parameters, files)
    if limits.download_bytes is not None and admitted.download_bytes > limits.download_bytes:
        raise OverBudget(f"'{name}' would download {admitted.download_bytes / GB:,.2f} GB of files; this shared Space "
                         "downloads at "
                         f"most {limits.download_bytes / GB:,.2f} GB per model. Pick a smaller model, or run calibscope locally.")
    return admitted


def fetch(admitted: Admitted, keep: Iterable[ModelSpec] = ()) -> None:
    """Download the admitted files at the pinned commit (within the disk quota), then trim the hub
    cache to its budget, never removing this model or those in ``keep``."""
    if not admitted.files:
        return
    from huggingface_hub import snapshot_download

    current = guard.current()
    spec = admitted.spec
    with current.reserve_disk(f"Downloading {spec.name}", admitted.download_bytes):
        try:
            snapshot_download(spec.name, revision=spec.revision, allow_patterns=[name for name, _ in admitted.files])
        except Exception as error:  # noqa: BLE001 - network and hub errors: the model cannot be loaded
            raise explain_load_failure(spec.name, OSError(str(error))) from None
    if current.models.hub_cache_bytes is not None:
        trim_hub_cache(current.models.hub_cache_bytes, [spec, *keep])


def trim_hub_cache(limit: int, keep: Iterable[ModelSpec]) -> int:
    """Delete the least recently used revisions of the hub cache until it holds at most ``limit``
    bytes, never a revision in ``keep``; returns the bytes freed."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache yet (or unreadable): nothing to trim
        return 0
    kept = {(spec.name, spec.revision) for spec in keep}
    size = cache.size_on_disk
    revisions = sorted(((repo, revision) for repo in cache.repos for revision in repo.revisions),
                       key=lambda pair: pair[0].last_accessed)
    doomed = []
    for repo, revision in revisions:
        if size <= limit:
            break
        if (repo.repo_id, revision.commit_hash) in kept or any(repo.repo_id == name for name, rev in kept if rev is None):
            continue
        doomed.append(revision.commit_hash)
        size -= revision.size_on_disk
    if not doomed:
        return 0
    strategy = cache.delete_revisions(*doomed)
    strategy.execute()
    log.info("hub cache trimmed by %.0f MB (%d revisions)", strategy.expected_freed_size / 2**20, len(doomed))
    return strategy.expected_freed_size


def model_bytes(admitted: Admitted, dtype_bytes: int) -> int:
    """What the admitted model's weights take in memory (0 when not counted)."""
    return admitted.parameters * dtype_bytes
