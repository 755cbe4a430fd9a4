"""Identity-independent cross-validation folds: subject-disjoint and stratified by expression.

Why stratified: on CK+48, folds made of contiguous subject ids put 51 of the 54 contempt faces
into one fold (subjects S139 and above) and a classifier then scores about 37% there. Here a
subject's faces always share one fold, and subjects are placed so that every fold holds every
expression where the data allow it, with per-class shares as even as possible.

Method (like scikit-learn's StratifiedGroupKFold, plus a coverage goal and a repair pass):
1. Subjects are visited rarest-class first (a seeded shuffle breaks ties), each going to the fold
   that leaves the fewest empty (fold, class) cells, then the most even class shares.
2. Repair: while a class with ≥ 2 subjects sits in one fold only (so one training split would
   lack it), apply the single-subject move or two-subject swap that fixes most. Deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _spread(fold_counts: np.ndarray, totals: np.ndarray) -> float:
    # Variance across folds of each class's share (rare classes weigh as much as common ones),
    # plus the variance of fold sizes; (k, C) → scalar.
    share = fold_counts / np.maximum(totals, 1)
    sizes = fold_counts.sum(1) / max(totals.sum(), 1)
    return float(share.var(axis=0).sum() + sizes.var())


def _concentrated(fold_counts: np.ndarray, subjects_per_class: np.ndarray) -> int:
    # Classes held by ≥ 2 subjects yet present in one fold only: that fold's training split lacks them.
    folds_with = (fold_counts > 0).sum(0)
    return int(((folds_with == 1) & (subjects_per_class >= 2)).sum())


def _moves(assign: np.ndarray, k: int):
    """Candidate repairs: (s, -f-1) moves subject s to fold f; (s, t) swaps subjects s and t."""
    sizes = np.bincount(assign, minlength=k)
    for s in range(len(assign)):
        if sizes[assign[s]] > 1:  # never empty a fold
            for f in range(k):
                if f != assign[s]:
                    yield s, -f - 1
        for t in range(s + 1, len(assign)):
            if assign[t] != assign[s]:
                yield s, t


def assign_folds(subjects: Sequence[str], labels: Sequence[int], k: int = 10, seed: int = 0) -> dict[str, int]:
    """Assigns every subject to one of `k` folds.

    Args:
        subjects: subject id of each face.
        labels: class index of each face (same length).
        k: number of folds.
        seed: tie-breaking seed; the same inputs and seed give the same folds.

    Returns:
        subject → fold index in [0, k).
    """
    if len(subjects) != len(labels):
        raise ValueError("subjects and labels differ in length")
    names = sorted(set(subjects))
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    if len(names) < k:
        raise ValueError(f"{k} subject-disjoint folds need at least {k} subjects; the data have {len(names)}")
    index = {s: i for i, s in enumerate(names)}
    n_classes = int(max(labels)) + 1
    counts = np.zeros((len(names), n_classes), dtype=np.int64)  # (S, C) faces per subject and class
    np.add.at(counts, ([index[s] for s in subjects], np.asarray(labels, dtype=np.int64)), 1)
    totals = counts.sum(0)  # (C,)
    subjects_per_class = (counts > 0).sum(0)  # (C,)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    rarity = np.where(counts > 0, totals[None, :], np.iinfo(np.int64).max).min(1)  # rarest class a subject has
    order = order[np.lexsort((-counts.sum(1)[order], rarity[order]))]

    fold_counts = np.zeros((k, n_classes), dtype=np.int64)  # (k, C)
    assign = np.full(len(names), -1)
    for s in order:
        best = None
        for f in rng.permutation(k):
            trial = fold_counts.copy()
            trial[f] += counts[s]
            key = (int((trial == 0).sum()), _spread(trial, totals))
            if best is None or key < best[0]:
                best = (key, f)
        f = best[1]
        fold_counts[f] += counts[s]
        assign[s] = f

    # Every fold needs a subject; with ≥ k subjects the coverage goal already fills them, but
    # guard it for degenerate inputs (e.g. all subjects identical).
    for f in range(k):
        if not (assign == f).any():
            donor = max(range(k), key=lambda g: (assign == g).sum())
            s = int(np.flatnonzero(assign == donor)[0])
            fold_counts[donor] -= counts[s]
            fold_counts[f] += counts[s]
            assign[s] = f

    # Repair pass: move one subject, or swap two, while that removes concentrated classes.
    for _ in range(len(names) * max(n_classes, 1)):
        bad = _concentrated(fold_counts, subjects_per_class)
        if bad == 0:
            break
        best = None
        for s, t in _moves(assign, k):
            trial = fold_counts.copy()
            if t < 0:  # move s to fold -t-1
                trial[assign[s]] -= counts[s]
                trial[-t - 1] += counts[s]
            else:  # swap s and t
                delta = counts[t] - counts[s]
                trial[assign[s]] += delta
                trial[assign[t]] -= delta
            key = (_concentrated(trial, subjects_per_class), int((trial == 0).sum()), _spread(trial, totals))
            if best is None or key < best[0]:
                best = (key, s, t, trial)
        if best is None or best[0][0] >= bad:
            break  # no single move or swap helps: the data (or this search) do not allow it
        _, s, t, fold_counts = best
        if t < 0:
            assign[s] = -t - 1
        else:
            assign[s], assign[t] = assign[t], assign[s]

    return {name: int(assign[i]) for i, name in enumerate(names)}
