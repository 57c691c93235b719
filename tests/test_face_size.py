"""Faces of any size: a large face's mask lives on a bounded grid that reaches every photo pixel of
its region, the bound stays exact on the written file, and mixed face sizes do not pad each other."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import need_model, run_tipim


def big_photo(side: int) -> np.ndarray:
    """scikit-image's astronaut, the face filling a ``side`` x ``side`` photo (face ~0.35 side)."""
    import skimage.data

    return np.array(Image.fromarray(skimage.data.astronaut()).crop((100, 0, 400, 300)).resize((side, side), Image.BICUBIC))


@pytest.mark.parametrize("s", [2, 3, 5, 24])
def test_the_surrogates_view_of_a_grid_mask_is_what_box_averaging_the_written_mask_gives(s):
    from tipim.align.paste import grid_blur, to_grid, upsample_mask

    g = torch.Generator().manual_seed(s)
    mask = (torch.rand(1, 3, 9, 7, generator=g) * 2 - 1) * 12 / 255
    up = upsample_mask(mask[0], s, 9 * s, 7 * s)
    assert float(up.abs().max()) <= float(mask.abs().max()) + 1e-7  # a convex mix: the bound carries over
    assert torch.allclose(F.avg_pool2d(up[None], s), grid_blur(mask, s), atol=1e-6)
    # computed in bands of rows, the same values
    bands = torch.cat([upsample_mask(mask[0], s, 9 * s - 1, 7 * s, (y, min(9 * s - 1, y + 7))) for y in range(0, 9 * s - 1, 7)], 1)
    assert torch.allclose(bands, up[:, : 9 * s - 1], atol=1e-6)
    region = (torch.rand(3, 5 * s + 1, 4 * s + 2, generator=g) * 255).to(torch.uint8)
    assert torch.equal(to_grid(region, s, band=1), to_grid(region, s, band=100))
    assert to_grid(region, s).shape == (3, 6, 5)


def test_a_large_photos_faces_are_cropped_as_the_aligner_crops_without_a_full_size_copy(monkeypatch):
    import tipim.align.paste as paste

    photo = big_photo(600)
    m = torch.tensor([[[0.3, 0.05, -40.0], [-0.05, 0.3, -30.0]], [[0.2, 0.0, -10.0], [0.0, 0.2, 5.0]]])  # one face half off the photo
    whole = paste.crop_faces(photo, m)
    monkeypatch.setattr(paste, "LARGE_PHOTO", 1000)
    sampled = paste.crop_faces(photo, m)
    assert sampled.shape == whole.shape == (2, 3, 112, 112)
    assert float((sampled - whole).abs().max()) * 255 < 0.01


def test_a_big_faces_mask_changes_its_whole_region_within_the_exact_bound():
    """A ~1,000-px face: its mask is optimised on a grid of a few hundred pixels, written onto
    every photo pixel of the face (no sub-grid), and the written photo seen through an area
    resampler is what the surrogate was shown."""
    need_model("mtcnn")
    need_model("arcface-mbf")
    from tipim.align.aligner import FaceAligner
    from tipim.align.paste import CropView, GridMaskView, face_region, grid_matrix, mask_grid_factor, paste_regions, protect_region, region_matrix, to_grid
    from tipim.attack import IdentityMaskAttack, MomentumStep
    from tipim.models import ZooEmbedder

    photo = big_photo(2800)
    face = FaceAligner(multi="largest").faces(photo)[0][0]
    s = mask_grid_factor(face.matrix)
    assert s >= 4
    x0, y0, x1, y1 = face_region(face.matrix, *photo.shape[:2])
    region = torch.from_numpy(photo[y0:y1, x0:x1]).permute(2, 0, 1)
    grid = to_grid(region, s)[None]
    assert max(grid.shape[-2:]) <= 4 * 112 * 1.5  # bounded by the crop, not by the face's pixels
    sizes = torch.tensor([grid.shape[-2:]])
    view = GridMaskView(CropView(grid_matrix(region_matrix(face.matrix, x0, y0), s)[None], sizes), grid, [s], sizes)
    torch.manual_seed(0)
    attack = IdentityMaskAttack(ZooEmbedder("arcface-mbf"), MomentumStep(12 / 255, steps=10))  # 10 x 1.5 levels: the bound is reached
    r = attack(grid, F.normalize(torch.randn(3, 512), dim=-1), view=view)
    written = paste_regions(photo, [region], [protect_region(region, r.x_p[0] - grid[0], s)], [(x0, y0, x1, y1)], 12)
    d = np.abs(written.astype(int) - photo.astype(int))
    assert d.max() == 12 and not d[:y0].any() and not d[y1:].any()
    inner = d[y0 + (y1 - y0) // 4 : y1 - (y1 - y0) // 4, x0 + (x1 - x0) // 4 : x1 - (x1 - x0) // 4].max(2)
    assert float((inner > 0).mean()) > 0.9  # the mask reaches (nearly) every pixel of the face, not a sub-grid
    seen = attack.embed(view(r.x_p))
    area = to_grid(torch.from_numpy(written[y0:y1, x0:x1]).permute(2, 0, 1), s)[None]
    plain = CropView(grid_matrix(region_matrix(face.matrix, x0, y0), s)[None], sizes)
    assert float((attack.embed(plain(area)) * seen).sum()) > 0.97  # the written photo, box-averaged, is what was optimised


def test_mixed_face_sizes_are_padded_only_within_buckets_of_whole_mmd_groups():
    from tipim.lightning.batches import size_buckets

    sizes = torch.tensor([[600, 560]] + [[60 + k, 58] for k in range(30)] + [[300, 280], [310, 290]])
    groups = torch.tensor([0] + [1 + k // 8 for k in range(30)] + [5, 6])
    buckets = size_buckets(sizes, groups)
    assert sorted(i for b in buckets for i in b) == list(range(len(sizes)))
    for b in buckets:
        assert len({int(groups[i]) for i in b}) == len({int(g) for g in groups if int(g) in {int(groups[i]) for i in b}})
        members = {int(groups[i]) for i in b}
        assert all(i in b for i in range(len(sizes)) if int(groups[i]) in members)  # whole MMD groups
        padded = int(sizes[b, 0].max()) * int(sizes[b, 1].max()) * len(b)
        own = int((sizes[b, 0] * sizes[b, 1]).sum())
        assert padded <= 1.5 * own or len(members) == 1
    assert [0] in buckets  # the big face is alone: it pads no small face
    total = sum(int(sizes[b, 0].max()) * int(sizes[b, 1].max()) * len(b) for b in buckets)
    assert total < 1.6 * int((sizes[:, 0] * sizes[:, 1]).sum())  # one padded batch would be 12x


@pytest.mark.slow
def test_protect_writes_a_large_photo_with_its_big_face_protected_and_bounded(tmp_path):
    """End to end through ``tipim protect``: a 6-MP photo with a ~1,000-px face (above the
    large-photo threshold: sampled crops, banded paste), written within the bound, the whole face
    changed, the surrogate fooled on the written file."""
    need_model("mtcnn")
    need_model("arcface-mbf")
    from tipim.files import load_rgb

    src = tmp_path / "in"
    src.mkdir()
    photo = big_photo(2500)
    Image.fromarray(photo).save(src / "closeup.jpg", quality=95)
    res = run_tipim(["protect", src, "--out", tmp_path / "out", "--check", "none"])
    assert res.returncode == 0, res.stderr
    rec = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()][-1]
    assert rec["status"] == "ok" and rec["linf"] == 12 and set(rec["seconds"]) == {"load", "attack", "write"}
    face = rec["faces"][0]
    assert face["surrogate_success"]
    original, written = load_rgb(src / "closeup.jpg").astype(int), load_rgb(tmp_path / "out" / rec["output"]).astype(int)
    d = np.abs(written - original).max(2)
    assert d.max() <= 12
    x0, y0, x1, y1 = (int(v) for v in face["box"])
    assert float((d[y0:y1, x0:x1] > 0).mean()) > 0.9


def test_face_ssim_of_a_tall_face_in_bands_is_the_whole_boxs_ssim():
    from torchmetrics.functional.image import structural_similarity_index_measure

    from tipim.evaluation.field import face_ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
    t = lambda im: torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].double()  # noqa: E731
    whole = float(structural_similarity_index_measure(t(b[20:290, 10:190]), t(a[20:290, 10:190]), data_range=255.0))
    assert face_ssim(a, b, [10, 20, 190, 290], band=64) == pytest.approx(whole, abs=1e-12)
    assert face_ssim(a, b, [10, 20, 190, 290], band=1000) == pytest.approx(whole, abs=1e-12)


def test_the_attackers_area_resampler_sees_a_big_face_at_crop_scale():
    """The attacker pipeline's second resampler: a big photo shrunk with an area filter before
    aligning. On an unprotected photo it finds the same face as the warp, and gives the same
    crop every time."""
    need_model("mtcnn")
    from tipim.align.aligner import FaceAligner
    from tipim.evaluation.evaluate import attacker_sees

    aligner = FaceAligner(multi="center")
    photo = big_photo(1600)
    warp, area = attacker_sees(photo, 0, aligner, "warp"), attacker_sees(photo, 0, aligner, "area")
    assert area is not None and warp is not None
    assert np.array_equal(area.crop, attacker_sees(photo, 0, aligner, "area").crop)
    diff = np.abs(area.crop.astype(int) - warp.crop.astype(int)).mean()
    assert diff < 12  # the same face, aligned alike (the area crop is smoother)
    with pytest.raises(ValueError, match="resample"):
        attacker_sees(photo, 0, aligner, "nearest")


def test_a_batch_of_a_big_face_and_a_crowd_of_small_ones_attacks_each_at_its_own_size(tmp_path, monkeypatch):
    """Two photos batched: the packaged team photo (small faces) and a close-up (a ~700-px face).
    The close-up's face is attacked on its mask grid, alone; the small faces are padded only to
    each other; every face comes back at its own size."""
    need_model("mtcnn")
    need_model("arcface-mbf")
    need_model("demo")
    from tipim.inputs import Item
    from tipim.lightning.module import ProtectionModule
    from tipim.lightning.photo_data import PhotoFolder, collate_photos
    from tipim.zoo.registry import artifact_path

    Image.fromarray(big_photo(2000)).save(tmp_path / "closeup.png")
    items = [Item("team", str(artifact_path("demo-gdp"))), Item("closeup", str(tmp_path / "closeup.png"))]
    folder = PhotoFolder(items, multi="all")
    batch = collate_photos([folder[0], folder[1]])
    module = ProtectionModule(steps=1)
    module.target_names = [f"t{k}" for k in range(4)]
    module.target_embeddings = F.normalize(torch.randn(4, 512), dim=-1)
    shapes = []
    attack = module._attack
    monkeypatch.setattr(module, "_attack", lambda x_r, *a, **k: shapes.append(tuple(x_r.shape)) or attack(x_r, *a, **k))
    out = module.predict_step(batch, 0)
    grids, sizes = batch.view_grids, batch.view_sizes
    big = [i for i, s in enumerate(grids) if s > 1]
    assert len(big) == 1 and len(grids) >= 4
    assert max(sizes[big[0]].tolist()) < 4 * 112 * 1.5  # the big face's variable is its grid, not its ~1,000-px region
    own = int((sizes[:, 0] * sizes[:, 1]).sum())
    padded = sum(n * h * w for n, _, h, w in shapes)
    assert padded <= 1.5 * own  # one padded batch would be len(faces) x the big grid
    assert (1, 3, *sizes[big[0]].tolist()) in shapes  # the big face alone
    assert [tuple(x.shape[1:]) for x in out["x_p"]] == [tuple(s) for s in sizes.tolist()]
    assert out["mask"][big[0]] is not None and all(out["mask"][i] is None for i in range(len(grids)) if i not in big)
