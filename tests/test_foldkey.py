"""Fold keys: fold numbers and "final" (every subject, no test split), as every stage reads them."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fersnet_ray.foldkey import (
    FINAL,
    NO_HELD_OUT,
    check_folds,
    final_evaluation,
    held_out,
    label,
    parse_fold,
    parse_folds,
    seed_offset,
    shard_fold,
    training_mask,
)


def test_parse_folds_accepts_numbers_all_and_final():
    assert parse_folds("all", 3) == (0, 1, 2)
    assert parse_folds("all", None) is None  # every trained fold (synthesize, finetune)
    assert parse_folds("2, 0,2", None) == (0, 2)
    assert parse_folds("final", None) == (FINAL,)
    assert parse_folds("final,1", 3) == (1, FINAL)  # numbers first, the final model last
    assert parse_folds("all,final", 2) == (0, 1, FINAL)
    assert parse_fold("FINAL") == FINAL and parse_fold(" 4 ") == 4 and parse_fold(2) == 2


@pytest.mark.parametrize(
    "spec, k, message",
    [
        ("two", 3, "--folds 'two': fold 'two': use a fold number (0, 1, …) or 'final'"),
        ("0,-1", 3, "fold -1: fold numbers start at 0"),
        ("", 3, "use 'all', a list like 0,3,7, or 'final'"),
        ("all,final", None, "'all' alone means every trained fold"),
    ],
)
def test_bad_fold_specs_say_what_to_write(spec, k, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_folds(spec, k)


def test_final_trains_on_every_face_and_is_tested_on_none():
    folds = np.array([0, 1, 2, 1, 0])
    assert training_mask(folds, 1).tolist() == [True, False, True, False, True]
    assert training_mask(folds, FINAL).all()
    assert (held_out(1), held_out(FINAL)) == (1, None)
    assert (label(3), label(FINAL)) == ("fold 3", "final")
    assert (seed_offset(3), seed_offset(FINAL)) == (3, 0)
    assert (shard_fold(3), shard_fold(FINAL)) == (3, -1)  # the shards' int64 column


def test_final_evaluation_holds_no_accuracy_and_says_why():
    e = final_evaluation(training_faces=126)
    assert e["accuracy"] is None and e["held_out"] is False and e["training_faces"] == 126
    assert e["note"] == NO_HELD_OUT and "no held-out accuracy" in NO_HELD_OUT and "cross-validation" in NO_HELD_OUT


def test_check_folds_names_the_missing_fold_and_always_accepts_final():
    check_folds((0, 2, FINAL), 3, "demo")
    with pytest.raises(KeyError, match="face table 'demo' has folds 0..2; no fold 5"):
        check_folds((FINAL, 5), 3, "demo", KeyError)
