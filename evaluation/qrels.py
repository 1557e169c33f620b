"""Reading and writing the evaluation files: queries, image queries, TREC qrels and TREC runs.

Formats (blank lines and lines starting with ``#`` are ignored; UTF-8, a BOM is accepted):

- queries: ``qid<TAB>text``
- image queries: ``qid<TAB>path``, the path relative to the file's folder
- qrels: ``qid 0 docid grade`` (whitespace separated; the second column is ignored)
- runs: ``qid Q0 docid rank score tag``. As in trec_eval, a run is ordered by score, highest
  first, ties broken by document id in *descending* order; the rank column is ignored. The run
  files written here have strictly decreasing scores, so any tool reproduces the ranking scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from shopsearch.errors import InvalidQueryError

MAX_GRADE = 1000.0  # relevance grades are small numbers (0-3, 0-4, percentages at most)

Qrels = dict[str, dict[str, float]]
Run = dict[str, list[tuple[str, float]]]  # qid -> [(docid, score)] best first


def _lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip() and not line.lstrip().startswith("#"):
                    yield n, line
    except FileNotFoundError:
        raise InvalidQueryError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise InvalidQueryError(f"{what} file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise InvalidQueryError(f"{what} file {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise InvalidQueryError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _tab_pairs(path: Path, what: str, second: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in _lines(path, what):
        qid, sep, value = line.partition("\t")
        qid, value = qid.strip(), value.strip()
        if not sep or not qid or not value:
            raise InvalidQueryError(f"{path} line {n}: expected 'qid<TAB>{second}', got {line[:80]!r}")
        if qid in out:
            raise InvalidQueryError(f"{path} line {n}: query id {qid!r} appears twice")
        out[qid] = value
    if not out:  # an empty file trained train-fusion on nothing and published it
        raise InvalidQueryError(f"{what} file {path} holds no entries")
    return out


def read_queries(path: Path) -> dict[str, str]:
    """qid -> query text, in file order."""
    return _tab_pairs(path, "queries", "text")


def read_image_queries(path: Path) -> dict[str, Path]:
    """qid -> image path (resolved against the file's folder; must exist)."""
    path = Path(path)
    out: dict[str, Path] = {}
    for n, (qid, rel) in enumerate(_tab_pairs(path, "image queries", "path").items(), 1):
        image = (path.parent / rel).resolve()
        if not image.is_file():
            raise InvalidQueryError(f"{path}: image of query {qid!r} not found: {image} (entry {n})")
        out[qid] = image
    return out


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def read_qrels(path: Path) -> Qrels:
    """qid -> {docid: grade}. Grades are numbers (usually integers); repeating a judgment with
    the same grade is accepted, with a different grade it is an error."""
    qrels: Qrels = {}
    for n, line in _lines(path, "qrels"):
        parts = line.split()
        if len(parts) != 4:
            raise InvalidQueryError(
                f"{path} line {n}: expected 4 fields 'qid 0 docid grade', got {len(parts)}: {line[:80]!r}"
            )
        qid, _, doc, grade_text = parts
        try:
            grade = _number(grade_text)
        except ValueError:
            raise InvalidQueryError(f"{path} line {n}: grade {grade_text!r} is not a number") from None
        if not -MAX_GRADE <= grade <= MAX_GRADE:  # 1e39 once trained a model of NaN weights
            raise InvalidQueryError(
                f"{path} line {n}: grade {grade_text!r} is outside -{MAX_GRADE:g}..{MAX_GRADE:g}"
            )
        judged = qrels.setdefault(qid, {})
        if doc in judged and judged[doc] != grade:
            raise InvalidQueryError(
                f"{path} line {n}: {qid} {doc} is judged twice with different grades "
                f"({judged[doc]:g} and {grade:g})"
            )
        judged[doc] = grade
    if not qrels:
        raise InvalidQueryError(f"qrels file {path} holds no judgments")
    return qrels


def read_run(path: Path) -> Run:
    """qid -> [(docid, score)] in trec_eval order (score descending, ties by docid descending)."""
    lists: dict[str, list[tuple[str, float]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for n, line in _lines(path, "run"):
        parts = line.split()
        if len(parts) != 6:
            raise InvalidQueryError(
                f"{path} line {n}: expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}: "
                f"{line[:80]!r}"
            )
        qid, _, doc, rank, score_text, _tag = parts
        try:
            int(rank)
            score = _number(score_text)
        except ValueError:
            raise InvalidQueryError(
                f"{path} line {n}: rank {rank!r} must be an integer and score {score_text!r} a number"
            ) from None
        if (qid, doc) in seen:
            raise InvalidQueryError(
                f"{path} line {n}: document {doc} appears twice for query {qid} (first on line "
                f"{seen[qid, doc]})"
            )
        seen[qid, doc] = n
        lists.setdefault(qid, []).append((doc, score))
    for qid, docs in lists.items():
        docs.sort(key=lambda ds: ds[0], reverse=True)  # stable sorts: docid desc within a score
        docs.sort(key=lambda ds: ds[1], reverse=True)
        lists[qid] = docs
    return lists


def write_run(path: Path, run: Mapping[str, Sequence[tuple[str, float]]], tag: str) -> None:
    """Write ``run`` (qid -> [(docid, score)] best first) in TREC format.

    Scores are made strictly decreasing (a tie or an inversion is nudged down by the smallest
    float step), so that trec_eval, which re-sorts by score, sees exactly this order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = "_".join(tag.split()) or "run"
    with open(path, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            prev: float | None = None
            for rank, (doc, score) in enumerate(docs, 1):
                s = float(score) if math.isfinite(score) else (prev if prev is not None else 0.0)
                if prev is not None and s >= prev:
                    s = float(np.nextafter(prev, -np.inf))
                prev = s
                f.write(f"{qid} Q0 {'_'.join(str(doc).split())} {rank} {s!r} {tag}\n")
