import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tipim.align.transform import ARCFACE_TEMPLATE, estimate_similarity, invert_affine


def test_umeyama_recovers_a_known_similarity():
    a, s = 0.3, 1.7
    m = torch.tensor([[s * math.cos(a), -s * math.sin(a), 12.0], [s * math.sin(a), s * math.cos(a), -4.0]])
    src = torch.rand(5, 2) * 100
    dst = src @ m[:, :2].T + m[:, 2]
    assert torch.allclose(estimate_similarity(src, dst), m, atol=1e-4)
    mi = invert_affine(m)
    assert torch.allclose(dst @ mi[:, :2].T + mi[:, 2], src, atol=1e-3)


def test_umeyama_shape_check():
    with pytest.raises(ValueError, match="matching"):
        estimate_similarity(torch.rand(5, 2), torch.rand(4, 2))


def test_aligned_lfw_face_has_its_landmarks_on_the_template(lfw):
    pytest.importorskip("tipim.align.mtcnn")
    from conftest import need_model

    need_model("mtcnn-onet")
    from tipim.align.aligner import FaceAligner

    img = np.asarray(Image.open(lfw / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").convert("RGB"))
    aligner = FaceAligner()
    faces, n = aligner.faces(img)
    assert n >= 1 and len(faces) == 1
    f = faces[0]
    assert f.crop.shape == (112, 112, 3) and f.crop.dtype == np.uint8
    bare, _ = aligner.faces(img, crops=False)  # a photo run's: the same face and matrix, no crop made
    assert bare[0].crop is None and bare[0].matrix == f.matrix and bare[0].landmarks == f.landmarks
    m = torch.tensor(f.matrix)
    mapped = torch.tensor(f.landmarks) @ m[:, :2].T + m[:, 2]
    residual = (mapped - ARCFACE_TEMPLATE).norm(dim=1)
    assert residual.mean() < 3.0 and residual[:2].max() < 2.5  # a similarity cannot fit a nose exactly
    # re-detecting on the aligned crop finds the face where the template says
    boxes, pts = FaceAligner(min_face_size=40).detect(np.pad(f.crop, ((40, 40), (40, 40), (0, 0))))
    assert len(boxes) >= 1 and (torch.tensor(pts[0]) - 40 - ARCFACE_TEMPLATE).norm(dim=1).mean() < 4.0


def test_large_photos_are_searched_downscaled_and_answered_in_full_pixels(lfw):
    """A 2500-px photo searched at 500 px finds the face where the 250-px original has it,
    in the large photo's own coordinates; 0 searches at full resolution."""
    from conftest import need_model

    need_model("mtcnn-onet")
    from tipim.align.aligner import FaceAligner

    img = np.asarray(Image.open(lfw / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").convert("RGB"))
    big = np.asarray(Image.fromarray(img).resize((2500, 2500), Image.BICUBIC))
    small_boxes, small_pts = FaceAligner().detect(img)
    boxes, pts = FaceAligner(detect_size=500).detect(big)
    assert len(boxes) == len(small_boxes) == 1
    assert np.abs(pts[0] / 10 - small_pts[0]).max() < 2.5, (pts[0] / 10, small_pts[0])
    assert np.abs(boxes[0, :4] / 10 - small_boxes[0, :4]).max() < 3.0
    assert FaceAligner(detect_size=0).detect(img)[0].shape == small_boxes.shape
    with pytest.raises(ValueError, match="detect_size"):
        FaceAligner(detect_size=-1)


@pytest.mark.slow
def test_align_folder_reports_bad_files_and_resumes(lfw, tmp_path):
    from conftest import need_model

    need_model("mtcnn-onet")
    from tipim.align.aligner import align_folder

    src = tmp_path / "src"
    (src / "A").mkdir(parents=True)
    (src / "B").mkdir()
    for i, name in enumerate(["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0002.jpg"]):
        (src / "A" / f"a{i}.jpg").write_bytes((lfw / name).read_bytes())
    (src / "B" / "zero.jpg").write_bytes(b"")
    (src / "B" / "text.jpg").write_text("hello, not a picture")
    (src / "B" / "truncated.jpg").write_bytes((lfw / "Aaron_Eckhart/Aaron_Eckhart_0001.jpg").read_bytes()[:300])
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(src / "B" / "blank.png")

    r = align_folder(src, tmp_path / "out", workers=1, progress=False)
    recs = {json.loads(l)["source"].split("/src/")[1]: json.loads(l) for l in (tmp_path / "out" / "alignment.jsonl").read_text().splitlines()}
    assert r["images"] == 6 and len(recs) == 6
    assert recs["A/a0.jpg"]["status"] == "ok" and (tmp_path / "out" / "A" / "a0.png").is_file()
    assert recs["A/a1.jpg"]["status"] == "ok" and len(recs["A/a1.jpg"]["landmarks"]) == 5
    for bad in ("B/zero.jpg", "B/text.jpg", "B/truncated.jpg"):
        assert recs[bad]["status"] == "unreadable" and bad.split("/")[1] in recs[bad]["error"]
    assert recs["B/blank.png"]["status"] == "no_face" and "no face" in recs["B/blank.png"]["error"]
    assert Image.open(tmp_path / "out" / "A" / "a0.png").size == (112, 112)

    png_time = (tmp_path / "out" / "A" / "a0.png").stat().st_mtime_ns
    again = align_folder(src, tmp_path / "out", workers=1, progress=False)
    assert again["skipped"] == 2 and again["counts"] == {"unreadable": 3, "no_face": 1}  # only failures retried
    assert (tmp_path / "out" / "A" / "a0.png").stat().st_mtime_ns == png_time
    assert len((tmp_path / "out" / "alignment.jsonl").read_text().splitlines()) == 10
