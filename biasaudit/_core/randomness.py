"""Counter-based draws: pure functions of (seed, stream, sample index, ...), computed for a whole batch
at once (methods.md section 10). No generator object is built per sample, and a draw never depends on
the batch a sample arrives in, the order of batches or the number of processes."""

from __future__ import annotations

import hashlib

import numpy as np

from biasaudit.errors import InputError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def stream_id(text: str) -> int:
    """A stable 32-bit id for a stream name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _splitmix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser (Steele, Lea & Flood 2014): a bijection of 64-bit words with full avalanche.
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash64(seed: int, stream: str, *keys: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of (seed, stream, key_1, key_2, ...), broadcast over array keys."""
    if not 0 <= seed < 2**64:
        raise InputError(f"seed is {seed}; expected an integer from 0 to 2**64 - 1.")
    with np.errstate(over="ignore"):  # wrapping arithmetic is the point
        # Seed and stream are mixed one after the other, so no two (seed, stream) pairs share a starting word.
        value = _splitmix(_splitmix(np.asarray(np.uint64(seed))) ^ np.uint64(stream_id(stream)))
    return extend_hash(value, *keys)


def extend_hash(value: np.ndarray, *keys: np.ndarray | int) -> np.ndarray:
    """hash64's words hashed further with more keys, broadcast: a hash shared by several streams is made once."""
    with np.errstate(over="ignore"):
        for key in keys:
            value = _splitmix(value ^ np.asarray(key).astype(np.int64).astype(np.uint64))
    return value


def uniform(seed: int, stream: str, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform draws in [0, 1) with 53 bits, one per broadcast key."""
    return (hash64(seed, stream, *keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# P(Poisson(1) <= k) for k = 0..19; beyond 19 the remaining mass is below 1e-17 (in float64 the CDF reaches 1 at
# k = 18, so no draw exceeds 18).
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=np.float64)) for k in range(20)])
# The inverse CDF by table: a 16-bit draw picks one of 65,536 buckets of [0, 1); a bucket that lies wholly between two
# CDF steps has one Poisson value, and only the 8 buckets that a step cuts (marked -1) need more bits.
_BUCKET_BITS = 16
_TAIL_BITS = 53 - _BUCKET_BITS
_BUCKET_LOW = np.searchsorted(_POISSON1_CDF, np.arange(1 << _BUCKET_BITS) / float(1 << _BUCKET_BITS), side="right")
_BUCKET_HIGH = np.searchsorted(
    _POISSON1_CDF, np.nextafter(np.arange(1, (1 << _BUCKET_BITS) + 1) / float(1 << _BUCKET_BITS), 0), side="right"
)
_POISSON1_TABLE = np.where(_BUCKET_LOW == _BUCKET_HIGH, _BUCKET_LOW, -1).astype(np.int8)


def poisson1(seed: int, stream: str, indices: np.ndarray, replicates: int) -> np.ndarray:
    """Poisson(1) draws [len(indices), replicates] (int64) by the inverse CDF of 53-bit counter-based uniforms.

    Speed: each 64-bit word gives four replicates their top 16 bits (replicate r is lane r % 4 of word r // 4, read
    little-endian on every machine), which settle the value by table in all but 8 of 65,536 buckets. Only a draw that
    lands in a cut bucket (0.01%) hashes its remaining 37 bits from a second stream, so every draw is still the inverse
    CDF of a 53-bit uniform, at a quarter of the hashing and without a search."""
    indices = np.asarray(indices, dtype=np.int64)
    words = SampleDraws(seed, stream, indices).words(-(-replicates // 4))
    buckets = words.astype("<u8", copy=False).view("<u2")[:, :replicates]
    small = np.take(_POISSON1_TABLE, buckets)
    cut = np.flatnonzero(small < 0)
    out = small.astype(np.int64)
    if cut.size:
        rows, cols = np.divmod(cut, replicates)
        tail = hash64(seed, stream + "/tail", indices[rows], cols) >> np.uint64(64 - _TAIL_BITS)
        top = buckets[rows, cols].astype(np.uint64) << np.uint64(_TAIL_BITS)
        out[rows, cols] = np.searchsorted(_POISSON1_CDF, (top | tail).astype(np.float64) / float(1 << 53), side="right")
    return out


# What every audit records of the generator above, so that audits drawn by another one are never paired with it
# (compare.py). Version 1 was numpy's default_rng built per sample; audits without this entry are version 1. Version 2
# drew each bootstrap weight, uniform and normal from a word of its own; version 3 draws four weights (poisson1) and
# two uniforms or normals from a word.
GENERATOR = {"name": "splitmix64-counter", "version": 3}


class SampleDraws:
    """The draws of one impairment on one batch: row i is a pure function of (seed, stream, indices[i], position),
    so a sample is impaired the same way whatever batch, order or process it arrives in. An impairment asks for as
    many positions per sample as it needs (one per pixel location, one per token, ...)."""

    def __init__(self, seed: int, stream: str, indices: np.ndarray) -> None:
        self._seed, self._stream, self._indices = seed, stream, np.asarray(indices, dtype=np.int64)
        self._hashed: np.ndarray | None = None  # computed on first use: a mute never draws

    @property
    def _keys(self) -> np.ndarray:
        if self._hashed is None:
            self._hashed = hash64(self._seed, self._stream, self._indices)
        return self._hashed

    def __len__(self) -> int:
        return len(self._indices)

    def words(self, count: int) -> np.ndarray:
        """[B, count] 64-bit words: the hash of each sample's key with each position."""
        x = self._keys[:, None] ^ np.arange(count, dtype=np.uint64)[None, :]
        # splitmix64's finaliser in place: the same words as _splitmix, without a temporary array per step.
        with np.errstate(over="ignore"):
            x += _GOLDEN
            x ^= x >> np.uint64(30)
            x *= _M1
            x ^= x >> np.uint64(27)
            x *= _M2
            x ^= x >> np.uint64(31)
        return x

    def uniform(self, count: int) -> np.ndarray:
        """[B, count] uniforms in [0, 1) with 32 bits each, two per word (an impairment compares them with a severity,
        for which 2**-32 is ample resolution)."""
        return self._halves(count).astype(np.float64) / float(1 << 32)

    def normal(self, count: int) -> np.ndarray:
        """[B, count] standard normals, two per word: Box-Muller on its two 32-bit halves gives a cosine and a sine
        normal, independent of each other (neither half is ever 0)."""
        pairs = -(-count // 2)
        halves = self._halves(2 * pairs).reshape(len(self), pairs, 2)
        radius = np.sqrt(-2.0 * np.log((halves[..., 1].astype(np.float64) + 0.5) / float(1 << 32)))
        angle = 2.0 * np.pi * ((halves[..., 0].astype(np.float64) + 0.5) / float(1 << 32))
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=2).reshape(len(self), 2 * pairs)[:, :count]

    def _halves(self, count: int) -> np.ndarray:
        """[B, count] 32-bit draws: position k is half k % 2 (low first, on every machine) of word k // 2."""
        return self.words(-(-count // 2)).astype("<u8", copy=False).view("<u4")[:, :count]
