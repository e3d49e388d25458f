"""What a user feels when a quantized model replaces the float one: the KL divergence of its
next-token distribution from the float model's, token by token, and how often the top token stays
the same (llama.cpp's ``llama-perplexity --kl-divergence``), beside the perplexity.

The float distributions are never held: for a 262k vocabulary one window's would take gigabytes.
What is kept of the float model is its final hidden state at each scored position (``FloatReference``,
hidden-size numbers per token); its logits are made again from them, HEAD_CHUNK tokens at a time,
beside the quantized model's, by the float model's own LM head, kept with them (no copy: a plan swaps
new tensors in and never writes into a weight), since a plan may change the head (fused rotations
turn it) and a reloaded checkpoint is another model."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine import guard
from engine.errors import CalibscopeError
from engine.hooks import base_model
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.quant.perplexity import HEAD_CHUNK, EvaluationSet, output_logits
from engine.runner import batch_working_bytes


@dataclass(frozen=True)
class FloatReference:
    """The float model on an evaluation set: its perplexity and its final hidden states at the scored
    positions ([windows, length - 1, hidden], the model's dtype and device); ``nll`` its NLL at each
    scored token ([windows, length - 1], float64); ``head``: its LM head's weight, bias and logit
    soft-cap, which make the logits of those states."""

    perplexity: float
    states: torch.Tensor
    evaluation_key: str
    nll: np.ndarray | None = None
    head: tuple[torch.Tensor, torch.Tensor | None, float | None] | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight, bias, cap = self.head
        logits = torch.nn.functional.linear(hidden.to(weight.device), weight, bias).float()
        return torch.tanh(logits / cap) * cap if cap else logits


@dataclass(frozen=True)
class Divergence:
    """A model against a float reference on one evaluation set: ``kld`` [windows, length - 1], KL(float ‖
    model) in nats at each scored token; ``same_top`` whether both put the same token first; ``nll``
    the model's NLL at each scored token (float64)."""

    perplexity: float
    kld: np.ndarray
    same_top: np.ndarray
    nll: np.ndarray | None = None

    def from_position(self, first: int) -> Divergence:
        """The same measures over positions ``first``.. of each window only (position j predicts token
        j + 1): llama-perplexity scores each chunk of n_ctx tokens from n_ctx / 2 on."""
        if self.nll is None:
            raise CalibscopeError("This divergence kept no per-token NLL: its perplexity cannot be restricted.")
        if not 0 <= first < self.kld.shape[1]:
            raise CalibscopeError(f"Position {first} is outside windows of {self.kld.shape[1] + 1} tokens.")
        nll = self.nll[:, first:]
        return Divergence(math.exp(float(nll.mean())), self.kld[:, first:], self.same_top[:, first:], nll)

    @property
    def mean_kld(self) -> float:
        return float(self.kld.mean(dtype=np.float64))

    @property
    def median_kld(self) -> float:
        return float(np.median(self.kld))

    @property
    def p99_kld(self) -> float:
        return float(np.percentile(self.kld, 99))

    @property
    def top1_agreement(self) -> float:
        return float(self.same_top.mean())

    def summary(self) -> dict[str, float]:
        return {"kld_mean": self.mean_kld, "kld_median": self.median_kld, "kld_p99": self.p99_kld,
                "top1_agreement": self.top1_agreement}

    def describe(self) -> str:
        return (f"KL divergence from float {self.mean_kld:.4f} nats/token (median {self.median_kld:.4f}, "
                f"p99 {self.p99_kld:.3f}); same top token {100 * self.top1_agreement:.2f}%")


def final_states(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states [batch, length - 1, hidden] that predict tokens 1.. of full windows."""
    return base_model(model)(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state[:, :-1]


def _working_bytes(loaded: LoadedModel, batch: int, length: int) -> int:
    """One batch through the blocks, and a chunk's float32 logits of both models, the float one's
    softmax, their difference and one more vocabulary-wide temporary."""
    return batch_working_bytes(loaded, batch, length) + HEAD_CHUNK * loaded.info.vocab_size * 4 * 5


def float_reference(loaded: LoadedModel, evaluation: EvaluationSet, batch_size: int = 4,
                    progress: Progress = no_progress) -> FloatReference:
    """The float model's perplexity on ``evaluation`` and the hidden states its divergences need."""
    loaded.require_resident("The float reference")
    device = next(loaded.model.parameters()).device
    windows = evaluation.windows
    states, nlls = [], []
    with guard.current().reserve_memory("The float reference", _working_bytes(loaded, batch_size, windows.shape[1])), \
            loaded.lock, torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start:start + batch_size].to(device)
            hidden = final_states(loaded.model, ids)
            states.append(hidden)
            flat, targets = hidden.reshape(-1, hidden.shape[-1]), ids[:, 1:].reshape(-1)
            for first in range(0, flat.shape[0], HEAD_CHUNK):
                logits = output_logits(loaded.model, flat[first:first + HEAD_CHUNK])
                part = targets[first:first + HEAD_CHUNK]
                nlls.append(torch.nn.functional.cross_entropy(logits, part, reduction="none").double())
            done = min(start + batch_size, windows.shape[0])
            progress(done / windows.shape[0], f"Float model: window {done} of {windows.shape[0]}")
        head = loaded.model.get_output_embeddings()  # under the lock: the float head, not a plan's
        kept = (head.weight.detach(), head.bias.detach() if isinstance(head.bias, torch.Tensor) else None,
                getattr(loaded.model.config, "final_logit_softcapping", None))
    nll = torch.cat(nlls).cpu().numpy().reshape(windows.shape[0], windows.shape[1] - 1)
    return FloatReference(math.exp(float(nll.sum()) / evaluation.tokens), torch.cat(states), evaluation.key, nll, kept)


def token_divergence(reference_logits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: KL(p ‖ q), the NLL of ``targets`` under q, and whether argmax p = argmax q.

    With d = z_p − z_q (the logits' difference), log p − log q = d − (lse_p − lse_q) and
    lse_q − lse_p = log E_p[exp(−d)], so KL = E_p[d] + log E_p[exp(−d)] = log1p(E_p[expm1(−(d − E_p[d]))]):
    in float32 this keeps its relative precision where KL is small (a good quantization's 1e-4),
    which Σ p (log p − log q) loses to the two log-softmaxes' rounding (1e-6 absolute)."""
    reference_logits, logits = reference_logits.float(), logits.float()
    same = reference_logits.argmax(-1) == logits.argmax(-1)
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None]).squeeze(-1)
    p = torch.softmax(reference_logits, dim=-1)
    difference = reference_logits - logits  # then centred, negated and expm1'd in place: one vocabulary-wide temporary
    difference -= expected(p, difference)[:, None]
    kld = torch.log1p(expected(p, difference.neg_().expm1_())).clamp(min=0)
    return kld, nll, same


def expected(p: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ_v p[t, v] values[t, v] per token t, as a batched dot product (no product tensor)."""
    return torch.bmm(p[:, None, :], values[:, :, None]).flatten()


def divergence(model: LoadedModel, evaluation: EvaluationSet, reference: FloatReference, batch_size: int = 4,
               progress: Progress = no_progress) -> Divergence:
    """``model`` (as it is now: e.g. inside ``quantized(...)``, or a reloaded checkpoint) against
    ``reference`` on ``evaluation``, whose logits its own LM head makes. Nothing is read back from
    the device until the end."""
    if reference.evaluation_key != evaluation.key:
        raise CalibscopeError("The float reference was made on other evaluation windows; make it on these.")
    model.require_resident("The divergence")
    device = next(model.model.parameters()).device
    windows = evaluation.windows
    klds, nlls, same = [], [], []
    with guard.current().reserve_memory("The divergence", _working_bytes(model, batch_size, windows.shape[1])), \
            model.lock, torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start:start + batch_size].to(device)
            hidden = final_states(model.model, ids)
            flat = hidden.reshape(-1, hidden.shape[-1])
            floats = reference.states[start:start + batch_size].reshape(-1, hidden.shape[-1])
            targets = ids[:, 1:].reshape(-1)
            for first in range(0, flat.shape[0], HEAD_CHUNK):
                part = slice(first, first + HEAD_CHUNK)
                reference_logits = reference.logits(floats[part])
                kld, nll, top = token_divergence(reference_logits.to(device), output_logits(model.model, flat[part]),
                                                 targets[part])
                klds.append(kld)
                nlls.append(nll.double())
                same.append(top)
            done = min(start + batch_size, windows.shape[0])
            progress(done / windows.shape[0], f"Divergence: window {done} of {windows.shape[0]}")
    shape = (windows.shape[0], windows.shape[1] - 1)
    nll = torch.cat(nlls).cpu().numpy().reshape(shape)
    return Divergence(math.exp(float(nll.sum()) / evaluation.tokens), torch.cat(klds).cpu().numpy().reshape(shape),
                      torch.cat(same).cpu().numpy().reshape(shape), nll)
