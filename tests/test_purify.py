"""The attacker's purifications (``tipim.evaluation.purify``): deterministic, shape- and
range-safe on odd photos, each doing what its name says."""

import numpy as np
import pytest

from tipim.evaluation.purify import PURIFIERS, parse, purify

SPECS = ["jpeg:30", "blur:1", "blur:2", "median:3", "median:5", "bilateral:25", "nlm:10", "down:2", "down:4", "bits:4", "median:3+jpeg:75"]


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 7, 3), (37, 91, 3), (64, 48, 3)])
@pytest.mark.parametrize("spec", SPECS)
def test_every_purification_keeps_shape_and_range_and_repeats_exactly(shape, spec):
    rng = np.random.default_rng(sum(shape))
    for photo in (rng.integers(0, 256, shape, dtype=np.uint8), np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)):
        out = purify(photo, spec)
        assert out.shape == photo.shape and out.dtype == np.uint8
        assert np.array_equal(out, purify(photo.copy(), spec))


def test_each_purification_does_what_it_says():
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(40, 200, (8, 8, 3)), 8, 0), 8, 1).astype(np.uint8)  # 64 x 64 blocks
    salt = smooth.copy()
    salt[rng.random(smooth.shape[:2]) < 0.05] = 255
    assert np.abs(purify(salt, "median:3").astype(int) - smooth).mean() < np.abs(salt.astype(int) - smooth).mean() / 3
    ramp = np.broadcast_to(np.linspace(60, 190, 64)[None, :, None], (64, 64, 3))
    noisy = np.clip(ramp + rng.normal(0, 8, ramp.shape), 0, 255).astype(np.uint8)
    smooth = ramp.round()
    for spec in ("blur:1", "nlm:10", "bilateral:25"):  # each removes much of the noise
        assert np.abs(purify(noisy, spec).astype(int) - smooth).mean() < np.abs(noisy.astype(int) - smooth).mean() * 0.8, spec
    assert len(np.unique(purify(noisy, "bits:3"))) <= 8
    flat = np.full((30, 30, 3), 77, np.uint8)
    assert np.array_equal(purify(flat, "down:4"), flat) and np.array_equal(purify(flat, "blur:2"), flat)
    assert not np.array_equal(purify(noisy, "jpeg:30"), noisy)
    assert np.array_equal(purify(noisy, ""), noisy) and np.array_equal(purify(noisy, "none"), noisy)


def test_bad_purification_specs_say_what_is_allowed():
    assert parse("median:3+jpeg:75") == [("median", 3.0), ("jpeg", 75.0)]
    with pytest.raises(ValueError, match="unknown purification 'sharpen:1'.*median:3\\+jpeg:75"):
        parse("sharpen:1")
    with pytest.raises(ValueError, match="unknown purification 'median'"):
        parse("median")
    with pytest.raises(ValueError, match="median takes a whole number from 2 to 15"):
        parse("median:2.5")
    with pytest.raises(ValueError, match="jpeg:0 is out of range"):
        parse("jpeg:0")
    with pytest.raises(ValueError, match="uint8"):
        purify(np.zeros((4, 4), np.uint8), "blur:1")
    assert set(PURIFIERS) == {"jpeg", "blur", "median", "bilateral", "nlm", "down", "bits"}


def test_the_posting_transform_can_blur_as_an_attacker_would_and_is_unchanged_when_it_does_not():
    import torch

    from tipim.attack import PostingTransform
    from tipim.attack.randomness import PerImageRandom

    x = torch.rand(3, 3, 112, 112, requires_grad=True)
    rng = lambda: PerImageRandom([1, 2, 3], "cpu")  # noqa: E731
    assert torch.equal(PostingTransform()(x, rng()), PostingTransform(blur=(0.0, 0.0))(x, rng()))  # off: the same draws
    plain = PostingTransform(jpeg_prob=0.0, scale=(1.0, 1.0), shift=0)
    blurred = PostingTransform(jpeg_prob=0.0, scale=(1.0, 1.0), shift=0, blur=(2.0, 2.0))(x, rng())
    tv = lambda y: float((y[..., 1:, :] - y[..., :-1, :]).abs().mean())  # noqa: E731
    assert tv(blurred) < tv(plain(x, rng())) / 3
    blurred.sum().backward()
    assert float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="blur is a sigma range"):
        PostingTransform(blur=(2.0, 1.0))


def test_purification_table_counts_only_transforms_that_leave_the_attacker_their_clean_faces():
    from tipim.evaluation.field import purification_markdown

    def row(pure, px, protected, clean_found):
        people = {f"p{i}": [int(i < protected), int(i >= clean_found)] for i in range(20)}
        return {"run": "d", "model": "facenet", "face_px": px, "jpeg": 0, "n": 20, "people": people, **({"purify": pure} if pure else {}),
                "protected": protected / 20, "clean_protected": 1 - clean_found / 20}

    rows = [row("", 40, 19, 20), row("", 110, 18, 20), row("blur:2", 40, 10, 19), row("blur:2", 110, 5, 12), row("median:5", 40, 17, 18)]
    table = purification_markdown(rows)
    assert "| as written | facenet | 95.0 (100) | 90.0 (100) | none |" in table
    assert "| as written, blur:2 | facenet | **50.0 (95)** | 25.0 (60) | 40 px: 8 people short |" in table  # 110 px: blur erased 40% of clean faces, not counted
    assert "| as written, median:5 | facenet | **85.0 (90)** | - | 40 px: 1 person short |" in table
    assert "pays (clean Rank-1 >= 90%): 4; at >= 90% protection: 2." in table
