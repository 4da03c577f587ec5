"""Prefix-sum parity: bit strings x and their running parities y_t = x_1 xor ... xor x_t, of any
length; a seeded, offline dataset of one training length and test lengths far beyond it.

    from attractor.data.parity import build_parity, load_parity, prefix_parity
    prefix_parity([1, 0, 1, 1])                               # array([1, 1, 0, 1], dtype=uint8)
    build_parity("data/parity", train_bits=16, test_bits=(16, 32, 64, 128, 256, 512), seed=0)
    data = load_parity("data/parity")
    data["train"].inputs                                      # (N, 16) uint8 bits
    data["test"][512].labels                                  # (M, 512) uint8 prefix parities

The task of Bansal et al. 2022 (arXiv 2202.05826): trained on short strings, a recurrent model
that iterates longer solves longer ones. A dataset is a folder:

    DIR/dataset.json          format, version, kind "parity", vocab_size 2, train_bits, test_bits,
                              recipe (counts, seed), splits (strings per split)
    DIR/train/inputs.npy      (N, train_bits) uint8 bits 0/1
    DIR/train/labels.npy      (N, train_bits) uint8 prefix parities
    DIR/test-<n>/inputs.npy   (M, n) uint8, one folder per test length n
    DIR/test-<n>/labels.npy

Bits are the token ids (0 and 1) and labels the answer ids; nothing is padded, every position
is scored. Each split's strings come from numpy's generator seeded with SeedSequence([seed, n,
split]) (split 0 train, 1 test), so a split does not change when others are added. Strings are
uniform and independent: at 16 bits a test string may also be a training string (10k of 65,536
possible); from 32 bits on a repeat is all but impossible. The folder is written under a
temporary name beside DIR and renamed into place when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attractor.data import folder
from attractor.data.folder import new_folder, write_folder
from attractor.errors import ConfigError, check_int

FORMAT = "attractor-parity"
VERSION = 1
VOCAB_SIZE = 2  # bits 0 and 1, also the two answers


@dataclass(frozen=True)
class Strings:
    inputs: np.ndarray  # (N, n) uint8 bits
    labels: np.ndarray  # (N, n) uint8 prefix parities

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def bits(self) -> int:
        return self.inputs.shape[1]


def prefix_parity(bits) -> np.ndarray:
    """(..., n) bits 0/1 -> (..., n) uint8 running parities y_t = x_1 xor ... xor x_t."""
    bits = np.asarray(bits)
    return (np.cumsum(bits, axis=-1, dtype=np.int64) % 2).astype(np.uint8)


def generate(count: int, bits: int, seed: int, split: int = 0) -> Strings:
    """`count` uniform random strings of `bits` bits with their labels, from SeedSequence([seed,
    bits, split]): the same arguments give the same strings on every machine."""
    check_int(count, "count", 0)
    check_int(bits, "bits", 1)
    rng = np.random.default_rng([check_int(seed, "seed", 0), bits, split])
    inputs = rng.integers(0, 2, size=(count, bits), dtype=np.uint8)
    return Strings(inputs, prefix_parity(inputs))


def parse_bits_list(text: str, flag: str = "--test-bits") -> tuple[int, ...]:
    """'16,32,64' -> (16, 32, 64), sorted and without repeats; ConfigError for anything else."""
    try:
        sizes = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected lengths in bits, comma-separated (16,32,64)") from None
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"{flag} {text!r}: expected lengths >= 1, comma-separated (16,32,64)")
    return tuple(sizes)


def build_parity(out: str | Path, train_bits: int = 16, test_bits=(16, 32, 64, 128, 256, 512),
                 n_train: int = 10000, n_test: int = 1000, seed: int = 0) -> Path:
    """Write a parity dataset to `out` (which must not exist; its parent must): n_train strings
    of train_bits bits, n_test strings of each length in test_bits. Returns the folder."""
    train_bits = check_int(train_bits, "train_bits", 1)
    test_bits = parse_bits_list(test_bits if isinstance(test_bits, str) else ",".join(map(str, test_bits)))
    check_int(n_train, "train", 1)
    check_int(n_test, "test", 1)
    out = new_folder(out)  # before generating
    splits = {"train": generate(n_train, train_bits, seed, 0),
              **{f"test-{n}": generate(n_test, n, seed, 1) for n in test_bits}}
    meta = {"format": FORMAT, "version": VERSION, "kind": "parity", "vocab_size": VOCAB_SIZE,
            "train_bits": train_bits, "test_bits": list(test_bits),
            "recipe": {"train": n_train, "test": n_test, "seed": seed},
            "splits": {name: {"examples": len(s), "bits": s.bits} for name, s in splits.items()}}
    return write_folder(out, meta, {name: {"inputs": s.inputs, "labels": s.labels} for name, s in splits.items()})


DATASET = ("a parity dataset", "attractor data parity --out DIR")  # (what messages call it, how to build one)


def read_meta(path: str | Path) -> dict:
    """dataset.json of a parity dataset; ConfigError (one line) for a folder that is not one."""
    return folder.read_meta(path, FORMAT, VERSION, *DATASET)


def load_parity(path: str | Path) -> dict:
    """{"meta": dataset.json, "train": Strings, "test": {bits: Strings}} (arrays memory-mapped)."""
    return folder.load_growing(path, FORMAT, VERSION, *DATASET, Strings, ("inputs", "labels"), "test_bits")
