"""Fold properties over random subject/label layouts (hypothesis), and the CK+48 pitfall."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fersnet_ray.prepare.folds import assign_folds


@st.composite
def layouts(draw, max_subjects: int = 40, max_k: int = 10):
    """Random data sets: subjects with a few expressions each, classes of very different sizes."""
    n_classes = draw(st.integers(2, 7))
    n_subjects = draw(st.integers(2, max_subjects))
    k = draw(st.integers(2, min(max_k, n_subjects)))
    subjects, labels = [], []
    for s in range(n_subjects):
        shown = draw(st.sets(st.integers(0, n_classes - 1), min_size=1, max_size=n_classes))
        for c in shown:
            frames = draw(st.integers(1, 3))
            subjects += [f"S{s:03d}"] * frames
            labels += [c] * frames
    return subjects, labels, k, draw(st.integers(0, 2**16))


def training_splits_missing(subjects, labels, fold_of, k) -> list[tuple[int, int]]:
    """(class, fold) pairs where a class held by ≥ 2 subjects is absent from that fold's training split."""
    holders = defaultdict(set)  # class → subjects showing it
    for s, c in zip(subjects, labels):
        holders[c].add(s)
    return [
        (c, f)
        for c, subs in holders.items()
        if len(subs) >= 2
        for f in range(k)
        if not {fold_of[s] for s in subs} - {f}
    ]


def feasible(subjects, labels, k) -> bool:
    """Brute force: does any assignment with no empty fold give every such class to every training split?"""
    names = sorted(set(subjects))
    for combo in itertools.product(range(k), repeat=len(names)):
        if len(set(combo)) == k and not training_splits_missing(subjects, labels, dict(zip(names, combo)), k):
            return True
    return False


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_folds_subject_disjoint_and_cover_classes(layout):
    subjects, labels, k, seed = layout
    fold_of = assign_folds(subjects, labels, k, seed)
    assert set(fold_of) == set(subjects)  # a subject has exactly one fold: disjoint by construction
    assert set(fold_of.values()) == set(range(k))  # no empty fold
    holders = defaultdict(set)
    for s, c in zip(subjects, labels):
        holders[c].add(s)
    if all(len(subs) >= 2 * k for subs in holders.values()):
        # Plenty of subjects per class: every class in every fold's test split, hence every training split.
        for f in range(k):
            assert {c for s, c in zip(subjects, labels) if fold_of[s] == f} == set(holders), f"fold {f}"


@settings(max_examples=150, deadline=None)
@given(layouts(max_subjects=7, max_k=3))
def test_every_class_in_every_training_split_where_the_data_allow_it(layout):
    subjects, labels, k, seed = layout
    fold_of = assign_folds(subjects, labels, k, seed)
    if feasible(subjects, labels, k):
        assert training_splits_missing(subjects, labels, fold_of, k) == []


@settings(max_examples=50, deadline=None)
@given(layouts())
def test_folds_are_deterministic_by_seed(layout):
    subjects, labels, k, seed = layout
    assert assign_folds(subjects, labels, k, seed) == assign_folds(list(subjects), list(labels), k, seed)


def test_rare_class_of_late_subjects_is_spread():
    # The CK+48 pitfall: the rare class (here 2) belongs to the 10 highest subject ids. Contiguous id
    # groups would put all of it in the last fold; stratified folds give every fold a test face of it.
    subjects, labels = [], []
    for s in range(100):
        for c in (0, 1) + ((2,) if s >= 90 else ()):
            subjects += [f"S{s:03d}"] * 3
            labels += [c] * 3
    fold_of = assign_folds(subjects, labels, k=10, seed=0)
    per_fold = defaultdict(int)
    for s, c in zip(subjects, labels):
        per_fold[fold_of[s]] += c == 2
    assert sorted(per_fold.values()) == [3] * 10
    sizes = defaultdict(int)
    for s in subjects:
        sizes[fold_of[s]] += 1
    assert max(sizes.values()) - min(sizes.values()) <= 6  # sizes even to within two subjects


def test_too_few_subjects_is_an_error():
    with pytest.raises(ValueError, match="need at least 3 subjects; the data have 2"):
        assign_folds(["a", "a", "b"], [0, 1, 0], k=3)
