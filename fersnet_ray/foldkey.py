"""Fold keys: which faces of the face table a model trains on, and which it is tested on.

    0 … k-1    cross-validation fold k: trains on the rows with fold ≠ k, is tested on the rows with fold = k
    "final"    the final model: trains on every row (every subject) and is tested on none

Every stage takes either (`--folds 0,3`, `--folds final`, `--fold final`), and every stage selects its
faces through `training_mask` and `held_out`, so "final" means the same thing in training, synthesis,
verification and fine-tuning. The store names their folders (`Store.fold_name`: `fold-<k>` or `final`).

A final model has no held-out accuracy: no subject is left to test it on. Its expected accuracy on new
subjects is what the cross-validation folds measure, so nothing here ever reports a test number for it.
"""

from __future__ import annotations

import numpy as np

FINAL = "final"
Fold = int | str  # a fold number, or FINAL
# The synthetic shards' int64 `fold` column for the final data set (every subject's faces augmented).
FINAL_SHARD_FOLD = -1
NO_HELD_OUT = (
    "final model: trained on every subject with no held-out test split, so it has no held-out accuracy; "
    "the cross-validation folds of the run estimate its accuracy on new subjects"
)


def final_evaluation(**facts) -> dict:
    """The final model's evaluation.json fields: no held-out accuracy (None, said in words), plus `facts`
    about what it trained on. Written last like a fold's, so it also marks the model finished."""
    return {"held_out": False, "accuracy": None, "note": NO_HELD_OUT, **facts}


def is_final(fold: Fold) -> bool:
    return fold == FINAL


def held_out(fold: Fold) -> int | None:
    """The face table's `fold` value the model is tested on and does not train on; None for the final model."""
    return None if is_final(fold) else int(fold)


def training_mask(folds: np.ndarray, fold: Fold) -> np.ndarray:
    """(N,) bool: the face-table rows (their `fold` values, (N,)) that the model of `fold` trains on."""
    folds = np.asarray(folds)
    return np.ones(len(folds), dtype=bool) if is_final(fold) else folds != int(fold)


def label(fold: Fold) -> str:
    """How messages name a fold: "fold 3", or "final"."""
    return FINAL if is_final(fold) else f"fold {fold}"


def seed_offset(fold: Fold) -> int:
    """Added to a run's seed for this model: k for fold k, 0 for the final model (it shares no data split)."""
    return 0 if is_final(fold) else int(fold)


def shard_fold(fold: Fold) -> int:
    """The synthetic shards' `fold` column: k, or FINAL_SHARD_FOLD (-1) for the final data set."""
    return FINAL_SHARD_FOLD if is_final(fold) else int(fold)


def parse_fold(text: str | int) -> Fold:
    """ "3" -> 3, "final" -> FINAL; anything else is a ValueError naming the choices."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        word = str(text).strip().lower()
        if word == FINAL:
            return FINAL
        try:
            value = int(word)
        except ValueError:
            raise ValueError(f"fold {text!r}: use a fold number (0, 1, …) or '{FINAL}'") from None
    if value < 0:
        raise ValueError(f"fold {value}: fold numbers start at 0")
    return value


def parse_folds(spec: str, k: int | None) -> tuple[Fold, ...] | None:
    """`--folds`: "all" (every fold 0..k-1; None when k is None, "every trained fold"), "0,3,7", "final", "all,final".

    Fold numbers come sorted, the final model last; the same key twice counts once.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ValueError(f"--folds {spec!r}: use 'all', a list like 0,3,7, or '{FINAL}'")
    if items == ["all"]:
        return None if k is None else tuple(range(k))
    keys: set[Fold] = set()
    for item in items:
        if item == "all":
            if k is None:
                raise ValueError(f"--folds {spec!r}: 'all' alone means every trained fold; list folds to mix them")
            keys.update(range(k))
        else:
            try:
                keys.add(parse_fold(item))
            except ValueError as e:
                raise ValueError(f"--folds {spec!r}: {e}") from None
    return sort_folds(keys)


def sort_folds(folds) -> tuple[Fold, ...]:
    """Fold numbers in order, then the final model."""
    numbers = sorted(f for f in folds if not is_final(f))
    return (*numbers, *([FINAL] if any(is_final(f) for f in folds) else []))


def check_folds(folds, k: int, dataset: str, error: type[Exception] = ValueError) -> None:
    """Raises `error` naming the first fold number the face table does not have (the final model always fits)."""
    bad = [f for f in folds if not is_final(f) and not 0 <= int(f) < k]
    if bad:
        raise error(f"face table {dataset!r} has folds 0..{k - 1}; no fold {bad[0]}")
