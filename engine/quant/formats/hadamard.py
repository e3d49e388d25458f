"""Hadamard matrices of any order that has a known one, and the orthonormal rotations made from them.

A Hadamard matrix H of order n has entries ±1 and H Hᵀ = n I, so H / √n is a rotation that spreads
every input channel over all n outputs with equal weight: an outlier channel of x becomes n values
of |x_j| / √n. Orders are 1, 2 and multiples of 4; this module builds

  * Sylvester's 2^k: H_2k = [[H, H], [H, -H]] (compressed-tensors' deterministic "hadamard");
  * Paley's first construction, order q + 1 for a prime q ≡ 3 (mod 4), and his second, order
    2 (q + 1) for a prime q ≡ 1 (mod 4), from the quadratic character χ of GF(q);
  * Kronecker products K ⊗ H_2^k of those, so 640 = 20 × 32 (Paley I, q = 19), 576 = 36 × 16
    (Paley II, q = 17), 1,536 = 12 × 128, 2,560 = 20 × 128 and 5,120 = 20 × 256 all work;
  * and, for an odd part no Paley construction of a prime reaches (52, 92, 172 ...), the known
    matrices compressed-tensors ships (N. J. A. Sloane's library), which its random Hadamard uses.

``random_hadamard`` is compressed-tensors' own ``random_hadamard_matrix`` (its "random-hadamard"
transform type, llm-compressor's QuIP default): the same matrix for the same seed, so a checkpoint
written here holds what its transform factory builds."""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from compressed_tensors.transform.utils.hadamard import REPO_PATH as KNOWN_MATRICES
from compressed_tensors.transform.utils.hadamard import _fetch_hadamard_divisor, random_hadamard_matrix
from safetensors import safe_open

from engine.errors import CalibscopeError


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = χ(j - i) over GF(q), q prime: 1 for a non-zero square, -1 for a non-square, 0 on the diagonal."""
    squares = {(x * x) % q for x in range(1, q)}
    character = torch.tensor([0] + [1 if d in squares else -1 for d in range(1, q)], dtype=torch.float64)
    index = torch.arange(q)
    return character[(index.view(1, -1) - index.view(-1, 1)) % q]


def _paley_one(q: int) -> torch.Tensor:
    """Order q + 1, q ≡ 3 (mod 4): H = I + S with S = [[0, 1ᵀ], [-1, Q]] skew-symmetric."""
    skew = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    skew[0, 1:], skew[1:, 0], skew[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
    return torch.eye(q + 1, dtype=torch.float64) + skew


def _paley_two(q: int) -> torch.Tensor:
    """Order 2 (q + 1), q ≡ 1 (mod 4): each entry of the symmetric C = [[0, 1ᵀ], [1, Q]] becomes a
    2 × 2 block, 0 -> [[1, -1], [-1, -1]] and ±1 -> ±[[1, 1], [1, -1]]."""
    conference = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    conference[0, 1:], conference[1:, 0], conference[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    ones = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(conference, ones) + torch.kron(torch.eye(q + 1, dtype=torch.float64), zero)


def _sylvester(n: int) -> torch.Tensor:
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < n:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def _paley_construction(order: int):
    """Which Paley construction makes exactly ``order`` from a prime, and its prime: (construction, q), or None."""
    if _is_prime(order - 1) and (order - 1) % 4 == 3:
        return _paley_one, order - 1
    if order % 2 == 0 and _is_prime(order // 2 - 1) and (order // 2 - 1) % 4 == 1:
        return _paley_two, order // 2 - 1
    return None


def _paley(order: int) -> torch.Tensor | None:
    """A Paley matrix of exactly ``order`` (a multiple of 4) from a prime, or None."""
    found = _paley_construction(order)
    return None if found is None else found[0](found[1])


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _odd_part(n: int) -> int:
    while n and n % 2 == 0:
        n //= 2
    return n


def _paley_base(n: int) -> int | None:
    """The Paley order the Kronecker product of ``n`` starts from (the smallest that works), or None."""
    odd = _odd_part(n)
    for factor in (4 * odd, 8 * odd, 16 * odd, 2 * odd):
        if n % factor == 0 and _power_of_two(n // factor) and _paley_construction(factor) is not None:
            return factor
    return None


@lru_cache(maxsize=1)
def _known_orders() -> tuple[int, ...]:
    """The orders of the matrices compressed-tensors ships (read once, not loaded)."""
    with safe_open(str(KNOWN_MATRICES), framework="pt") as file:
        return tuple(sorted((int(key) for key in file.keys()), reverse=True))  # noqa: SIM118 (not a container)


def known_base(n: int) -> int | None:
    """The largest order among compressed-tensors' known matrices that leaves a power of two, as its
    random Hadamard takes it, or None."""
    return next((order for order in _known_orders() if n % order == 0 and _power_of_two(n // order)), None)


@lru_cache(maxsize=16)
def _base(order: int) -> torch.Tensor:
    """A small base matrix (kept: a few KB each); the Kronecker products are made when asked."""
    if _power_of_two(order):
        return _sylvester(order)
    found = _paley(order)
    return found if found is not None else _fetch_hadamard_divisor(order, torch.float64)


def has_hadamard(n: int) -> bool:
    """Whether ``hadamard(n)`` exists here, answered without building it."""
    return n > 0 and (_power_of_two(n) or _paley_base(n) is not None or known_base(n) is not None)


def hadamard(n: int) -> torch.Tensor:
    """A Hadamard matrix of order ``n`` (float64, entries ±1, H Hᵀ = n I); deterministic."""
    if not has_hadamard(n):
        raise CalibscopeError(f"No Hadamard matrix of order {n} is known here (orders are 1, 2 or multiples of 4, built "
                              "as a Paley matrix of a prime or a known one times a power of two): rotate in blocks whose "
                              "size divides it (e.g. the head dimension or 128), or leave this layer unrotated.")
    with torch.device("cpu"):  # built on the CPU whatever the default device; users copy them where they run
        if _power_of_two(n):
            return _sylvester(n)
        base = _paley_base(n) or known_base(n)
        return torch.kron(_base(base), _sylvester(n // base))


def has_random_hadamard(n: int) -> bool:
    """Whether compressed-tensors builds a random Hadamard of order ``n`` (a known matrix times a power of two)."""
    return n > 0 and known_base(n) is not None


def random_hadamard(n: int, generator: torch.Generator) -> torch.Tensor:
    """compressed-tensors' random Hadamard of order ``n`` (float64, entries ±1): a known Hadamard
    matrix applied to a diagonal of random signs drawn from ``generator``."""
    try:
        with torch.device("cpu"):  # the package draws its signs without naming a device: the generator's is the CPU
            return random_hadamard_matrix(n, torch.float64, torch.device("cpu"), generator)
    except ValueError:
        raise CalibscopeError(f"compressed-tensors has no random Hadamard matrix of order {n}: use the deterministic "
                              "Hadamard, or rotate in blocks whose size divides it.") from None


class InputRotation:
    """x -> x H / √b at inference, in consecutive blocks of b = H's order channels, computed in float32
    and returned in x's dtype, as compressed-tensors' online transform computes it at its default
    precision (``matrix``: the ±1 H, as a checkpoint stores it)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix.to(torch.float32)
        self.order = matrix.shape[0]
        self._on: dict[torch.device, torch.Tensor] = {self.matrix.device: self.matrix}  # one copy per device

    def on(self, device: torch.device) -> torch.Tensor:
        """The matrix on ``device``, copied there once for every layer that shares this rotation."""
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = self.matrix.to(device)
        return self._on[device]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.to(torch.float32).unflatten(-1, (-1, self.order))
        return ((blocks @ self.on(x.device)) / math.sqrt(self.order)).flatten(-2).to(x.dtype)


def turned(values: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """values (I ⊗ H / √b) over the last dimension (``matrix``: the ±1 H of order b), computed and
    returned in values' dtype: callers pass a wide copy (float64 for a float32 weight, float32 for a
    half-precision one) and round once after their last turn."""
    hadamard = matrix.to(device=values.device, dtype=values.dtype)
    blocks = values.unflatten(-1, (-1, hadamard.shape[0]))
    return (blocks @ hadamard).flatten(-2) / math.sqrt(hadamard.shape[0])


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where a rotation is fused into a weight: float64 for a float32 weight (as compressed-tensors
    fuses), float32 for a half-precision one, whose rounding is 2^16 times coarser than float32's."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32

