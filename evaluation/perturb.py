"""Deterministic query perturbations for robustness runs.

Each perturbation is seeded by the query id (and the kind and a global seed) through SHA-256, so
a query is always perturbed the same way, on every machine and Python version (``hash()`` is
salted per process and would not be).
"""

from __future__ import annotations

import hashlib
import random
import string

from shopsearch.errors import ConfigError

PERTURBATIONS: tuple[str, ...] = ("typo", "drop", "case")


def _rng(kind: str, qid: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{kind}\x00{qid}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def typo(text: str, rng: random.Random) -> str:
    """One character edit at a letter or digit: substitute, delete, insert or swap with the next."""
    positions = [i for i, ch in enumerate(text) if ch.isalnum()]
    if not positions:
        return text
    i = rng.choice(positions)
    ch = text[i]
    alphabet = string.digits if ch.isdigit() else string.ascii_lowercase
    ops = ["substitute", "insert"]
    if len(text.strip()) > 1:
        ops.append("delete")
    if i + 1 < len(text) and text[i + 1].isalnum() and text[i + 1] != ch:
        ops.append("swap")
    op = rng.choice(ops)
    if op == "substitute":
        new = rng.choice([c for c in alphabet if c != ch.lower()])
        return text[:i] + (new.upper() if ch.isupper() else new) + text[i + 1 :]
    if op == "insert":
        return text[:i] + rng.choice(alphabet) + text[i:]
    if op == "delete":
        return text[:i] + text[i + 1 :]
    return text[:i] + text[i + 1] + ch + text[i + 2 :]


def drop_word(text: str, rng: random.Random) -> str:
    """Remove one word; a one-word query is left as it is (dropping it would leave nothing)."""
    words = text.split()
    if len(words) < 2:
        return text
    del words[rng.randrange(len(words))]
    return " ".join(words)


def random_case(text: str, rng: random.Random) -> str:
    """Each letter upper- or lower-cased at random."""
    return "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in text)


_FUNCS = {"typo": typo, "drop": drop_word, "case": random_case}


def perturb(text: str, kind: str, qid: str, *, seed: int = 0) -> str:
    """The ``kind`` perturbation of ``text`` (one of :data:`PERTURBATIONS`), seeded by ``qid``."""
    try:
        func = _FUNCS[kind]
    except KeyError:
        raise ConfigError(f"unknown perturbation {kind!r} (known: {', '.join(PERTURBATIONS)})") from None
    return func(text, _rng(kind, qid, seed))
