"""Top-k accuracy as the guides' scripts compute it (label + class offset among the k highest)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from runner.errors import RunnerError

TOPK = 5


def topk_hits(logits: np.ndarray, labels: np.ndarray, class_offset: int,
              k: int = TOPK) -> np.ndarray:
    """How many images have their class (label + offset) among the k highest logits, k=1..k."""
    ranked = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hits = ranked == (labels + class_offset)[:, None]
    return (np.cumsum(hits, axis=1) > 0).sum(axis=0)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, class_offset: int,
                  k: int = TOPK) -> list[float]:
    """Percent of images whose class (label + offset) is among the k highest logits, k=1..k."""
    return [float(100.0 * (h / len(labels))) for h in topk_hits(logits, labels, class_offset, k)]


def streamed_topk_accuracy(chunks: Iterator[np.ndarray], labels: np.ndarray,
                           class_offset: int, k: int = TOPK) -> list[float]:
    """`topk_accuracy` over logits that arrive in consecutive chunks: memory of one chunk."""
    hits = np.zeros(k, dtype=np.int64)
    seen = 0
    for logits in chunks:
        if seen + len(logits) > len(labels):
            seen += len(logits)
            break
        hits += topk_hits(logits, labels[seen : seen + len(logits)], class_offset, k)
        seen += len(logits)
    if seen != len(labels):
        raise RunnerError(f"the logits cover {'at least ' if seen > len(labels) else ''}{seen} "
                          f"images, the dataset has {len(labels)}: "
                          "recompute with cache.force=[infer]")
    return [float(100.0 * (h / seen)) for h in hits]
