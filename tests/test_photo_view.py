"""The photo-region view and paste-back: each face's crop, its gradient, the exact bound in the
written pixels, and the posting transform (real MTCNN on scikit-image's astronaut)."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import astronaut, need_model


def _regions(photo: np.ndarray, faces):
    """The batch the photo pipeline builds: padded regions, rectangles, a CropView."""
    from tipim.align.paste import CropView, face_region, region_matrix

    h, w = photo.shape[:2]
    rects = [face_region(f.matrix, h, w) for f in faces]
    hh, ww = max(r[3] - r[1] for r in rects), max(r[2] - r[0] for r in rects)
    x = torch.zeros(len(faces), 3, hh, ww)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        x[i, :, : y1 - y0, : x1 - x0] = torch.from_numpy(photo[y0:y1, x0:x1]).permute(2, 0, 1).float() / 255
    m = torch.stack([region_matrix(f.matrix, r[0], r[1]) for f, r in zip(faces, rects)])
    sizes = torch.tensor([[r[3] - r[1], r[2] - r[0]] for r in rects])
    return x, rects, CropView(m, sizes), m, sizes


def test_crop_view_shows_the_aligners_crop_of_every_face():
    need_model("mtcnn")
    need_model("demo")
    from tipim.align.aligner import FaceAligner
    from tipim.files import load_rgb
    from tipim.zoo.registry import artifact_path

    photo = load_rgb(artifact_path("demo-gdp"))
    faces, _ = FaceAligner(multi="all").faces(photo)
    assert len(faces) >= 3
    x, rects, view, _, _ = _regions(photo, faces)
    crops = torch.stack([torch.from_numpy(f.crop).permute(2, 0, 1) for f in faces]).float() / 255
    assert view.s == [1] * len(faces) and float((view(x) - crops).abs().max()) * 255 < 0.51  # the aligner's uint8 crop, up to its rounding
    with pytest.raises(ValueError, match="faces got a batch"):
        view(x[:1])


def test_a_faces_crop_does_not_depend_on_the_faces_batched_with_it():
    """Photos batched together: a small face padded next to a large one (which needs area
    resampling) is seen exactly as alone, so the photo batch size changes no crop."""
    need_model("mtcnn")
    from tipim.align.aligner import FaceAligner
    from tipim.align.paste import CropView

    aligner = FaceAligner(multi="largest")
    seen = []
    for size in (1400, 160):
        photo = np.array(astronaut(512).crop((100, 0, 400, 300)).resize((size, size), Image.BICUBIC))
        seen.append(_regions(photo, aligner.faces(photo)[0]))
    (xb, _, vb, mb, sb), (xs, _, vs, ms, ss) = seen
    both = torch.zeros(2, 3, *xb.shape[-2:], dtype=torch.float64)
    both[0] = xb[0]
    both[1, :, : xs.shape[-2], : xs.shape[-1]] = xs[0]
    view = CropView(torch.cat([mb, ms]), torch.cat([sb, ss]))
    assert view.s[0] > 1 and view.s[1] == 1
    together = view(both)
    assert torch.equal(together[1], vs(xs.double())[0]) and torch.equal(together[0], vb(xb.double())[0])


def test_crop_view_gradient_covers_a_large_face_and_stays_inside_a_small_ones_region():
    need_model("mtcnn")
    from tipim.align.aligner import FaceAligner

    aligner = FaceAligner(multi="largest")
    for size, oversampled in ((1400, True), (160, False)):  # faces of ~480 and ~30 pixels
        photo = np.array(astronaut(512).crop((100, 0, 400, 300)).resize((size, size), Image.BICUBIC))
        faces, _ = aligner.faces(photo)
        x, rects, view, _, _ = _regions(photo, faces)
        assert (view.s[0] > 1) == oversampled
        x.requires_grad_(True)
        view(x).sum().backward()
        g = x.grad[0].abs().sum(0)
        (x0, y0, x1, y1) = rects[0]
        assert float(g[y1 - y0 :].abs().sum() + g[:, x1 - x0 :].abs().sum()) == 0  # padding never seen
        # the crop's footprint (its inner half, well inside the rotated square) is fully seen
        cy, cx, r = (y1 - y0) // 2, (x1 - x0) // 2, (x1 - x0) // 5
        assert float((g[cy - r : cy + r, cx - r : cx + r] > 0).float().mean()) > 0.99


def test_protected_regions_are_what_the_photo_holds_within_the_exact_bound():
    """Small, large and several faces: the mask is optimised in photo pixels, pasted with the
    bound exact, and the written photo, cropped as an aligner crops it, is what was optimised."""
    need_model("mtcnn")
    need_model("arcface-mbf")
    from tipim.align.aligner import FaceAligner
    from tipim.align.paste import crop_faces, paste_regions
    from tipim.attack import IdentityMaskAttack, MomentumStep, quantise_within
    from tipim.models import ZooEmbedder

    torch.manual_seed(0)
    attack = IdentityMaskAttack(ZooEmbedder("arcface-mbf"), MomentumStep(12 / 255, steps=8))
    t_emb = torch.nn.functional.normalize(torch.randn(4, 512), dim=-1)
    small = np.array(astronaut(512).resize((190, 190), Image.BICUBIC))  # a face ~33 px wide
    big = np.array(astronaut(512).crop((100, 0, 400, 300)).resize((1000, 1000), Image.BICUBIC))  # ~340 px
    group = np.concatenate([small, small[:, ::-1]], 1).copy()  # two faces
    for photo, n_faces in ((small, 1), (big, 1), (group, 2)):
        faces, _ = FaceAligner(multi="all").faces(photo)
        assert len(faces) == n_faces
        x, rects, view, _, _ = _regions(photo, faces)
        r = attack(x, t_emb, view=view)
        x_r8, x_p8 = (x * 255).round().to(torch.uint8), quantise_within(r.x_p, x, 12 / 255)
        out = paste_regions(photo, x_r8, x_p8, rects, 12)
        touched = np.zeros(photo.shape[:2], bool)
        for x0, y0, x1, y1 in rects:
            touched[y0:y1, x0:x1] = True
        d = np.abs(out.astype(int) - photo.astype(int))
        assert d.max() == 12 and not d.max(2)[~touched].any()
        m = torch.tensor([f.matrix for f in faces])
        e_written = attack.embed(crop_faces(out, m))
        e_optimised = attack.embed(view(x_p8.float() / 255))
        e_clean = attack.embed(crop_faces(photo, m))
        assert (e_written * e_optimised).sum(1).min() > 0.97  # what is written is what was optimised
        assert (e_written * e_clean).sum(1).max() < 0.5  # and it moved the identity


def test_paste_regions_rejects_mismatched_inputs():
    from tipim.align.paste import paste_regions

    photo = np.zeros((50, 50, 3), np.uint8)
    x = torch.zeros(2, 3, 10, 10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="boxes"):
        paste_regions(photo, x, x, [(0, 0, 10, 10)], 12)
    with pytest.raises(ValueError, match="uint8"):
        paste_regions(photo.astype(np.float32), x, x, [(0, 0, 10, 10)] * 2, 12)


def test_posting_transform_is_differentiable_and_bounded():
    from tipim.attack import PostingTransform, RandomAffine

    torch.manual_seed(0)
    t = PostingTransform(quality=(70, 90), base=RandomAffine())
    x = torch.rand(3, 3, 112, 112, requires_grad=True)
    y = t(x)
    v = y.detach()
    assert v.shape == x.shape and 0 <= float(v.min()) and float(v.max()) <= 1.0 + 1e-4
    y.mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # JPEG at quality 75 is close to, but not equal to, its input
    j = PostingTransform(quality=(75, 75), jpeg_prob=1.0, scale=(1.0, 1.0), shift=0)(x.detach())
    assert 0 < float((j - x.detach()).abs().mean()) < 0.2
    with pytest.raises(ValueError, match="quality"):
        PostingTransform(quality=(0, 120))
