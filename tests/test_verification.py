import numpy as np
import pytest

from tipim.evaluation.verification import best_threshold, kfold_accuracy, read_pairs


def test_official_pairs_file_is_read_as_ten_folds(lfw):
    pairs = read_pairs(lfw.parent / "lfw-lists" / "pairs.txt")
    assert len(pairs) == 6000
    assert sum(p.same for p in pairs) == 3000
    assert {p.fold for p in pairs} == set(range(10))
    assert pairs[0].a == "Abel_Pacheco/Abel_Pacheco_0001" and pairs[0].b == "Abel_Pacheco/Abel_Pacheco_0004"
    assert all((lfw / f"{p.a}.jpg").is_file() and (lfw / f"{p.b}.jpg").is_file() for p in pairs[::97])


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.normal(size=60)
        y = rng.random(60) < 0.5
        t = best_threshold(s, y)
        brute = max(((s > c) == y).mean() for c in np.concatenate([s, [s.min() - 1]]))
        assert ((s > t) == y).mean() == pytest.approx(brute)


def test_kfold_accuracy_on_separable_and_random_scores():
    rng = np.random.default_rng(1)
    y = np.tile([True, False], 300)
    folds = np.repeat(np.arange(10), 60)
    mean, std, accs = kfold_accuracy(np.where(y, 0.8, 0.2) + rng.normal(0, 0.05, 600), y, folds)
    assert mean == 1.0 and std == 0.0 and len(accs) == 10
    mean, _, _ = kfold_accuracy(rng.normal(size=600), y, folds)
    assert 0.35 < mean < 0.65
