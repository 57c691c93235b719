"""The self-check written into every manifest, and the photo benchmark's scoring of field sets
(real LFW photos, real recognisers)."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import astronaut, need_model


def test_self_check_tells_a_recognised_face_from_a_changed_one():
    need_model("mtcnn")
    need_model("sface")
    from tipim.align.aligner import FaceAligner
    from tipim.align.paste import crop_faces
    from tipim.evaluation.selfcheck import IndependentCheck, describe

    photo = np.array(astronaut(256))
    faces, _ = FaceAligner(multi="all").faces(photo)
    m = torch.tensor([f.matrix for f in faces])
    clean = (crop_faces(photo, m) * 255).round().to(torch.uint8)
    boxes = [f.box for f in faces]
    check = IndependentCheck(["sface"])
    same = check(photo.copy(), clean, boxes)
    assert same[0]["found"] and same[0]["recognised_by"] == ["sface"] and same[0]["models"]["sface"]["cos"] > 0.9
    other = photo.copy()  # someone else's face where the face was
    from tipim.zoo.registry import artifact_path
    from tipim.files import load_rgb

    team = load_rgb(artifact_path("demo-gdp"))
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    stranger, _ = FaceAligner(multi="largest").faces(team)
    sx0, sy0, sx1, sy1 = (int(v) for v in stranger[0].box)
    patch = Image.fromarray(team[sy0:sy1, sx0:sx1]).resize((x1 - x0, y1 - y0))
    other[y0:y1, x0:x1] = np.asarray(patch)
    changed = check(other, clean, boxes)
    assert changed[0]["found"] and changed[0]["recognised_by"] == []
    gone = check(np.full_like(photo, 128), clean, boxes)
    assert gone[0] == {"found": False, "recognised_by": [], "models": {}}
    assert describe(same + changed + gone, ["sface"]) == "independent check (sface): 2/3 faces recognised by none of 1 models, 1 by 1"



def test_self_check_pairs_each_face_found_again_with_its_own_original():
    """Two people in one photo, checked in one batch per model: each face found again is compared
    with its own unprotected face, also when the face before it is not found."""
    need_model("mtcnn")
    need_model("sface")
    from tipim.align.aligner import FaceAligner
    from tipim.align.paste import crop_faces
    from tipim.evaluation.selfcheck import IndependentCheck
    from tipim.files import load_rgb
    from tipim.zoo.registry import artifact_path

    team = load_rgb(artifact_path("demo-gdp"))
    stranger, _ = FaceAligner(multi="largest").faces(team)
    x0, y0, x1, y1 = (int(v) for v in stranger[0].box)
    pad = (x1 - x0) // 2
    other = np.asarray(Image.fromarray(team[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad]).resize((256, 256)))
    photo = np.concatenate([np.array(astronaut(256)), other], axis=1)
    faces, _ = FaceAligner(multi="all").faces(photo)
    faces = sorted(faces, key=lambda f: f.box[0])
    assert len(faces) == 2
    clean = (crop_faces(photo, torch.tensor([f.matrix for f in faces])) * 255).round().to(torch.uint8)
    boxes = [f.box for f in faces]
    check = IndependentCheck(["sface"])
    both = check(photo.copy(), clean, boxes)
    assert [f["recognised_by"] for f in both] == [["sface"], ["sface"]]
    crossed = check(photo.copy(), clean.flip(0), boxes)  # each face against the other person
    assert [f["recognised_by"] for f in crossed] == [[], []]
    first_gone = photo.copy()
    first_gone[:, :256] = 128
    second = check(first_gone, clean, boxes)
    assert not second[0]["found"] and second[1]["recognised_by"] == ["sface"]
    assert abs(second[1]["models"]["sface"]["cos"] - both[1]["models"]["sface"]["cos"]) < 1e-3

def test_field_benchmark_scores_clean_swapped_and_missing_faces(lfw, tmp_path):
    """The benchmark's scoring on a tiny set: a run that writes the clean photos is not
    protected, one that writes somebody else's photo is, one with no face counts as missing."""
    need_model("mtcnn")
    need_model("sface")
    from tipim.evaluation.field import held_out_markdown, make_field_set, markdown, score_field
    from tipim.files import append_jsonl
    from tipim.models import ZooEmbedder

    field = make_field_set(lfw, tmp_path / "field", probes=3, distractors=8, sizes=(80,), seed=1)
    people = [p["identity"] for p in field["probes"]]
    assert len(people) == 3 and all(p["identity"] in {g["identity"] for g in field["gallery"]} for p in field["probes"])
    photos = tmp_path / "field" / "photos-80"
    for label, pick in (("clean", lambda i: photos / f"{people[i]}.png"), ("swapped", lambda i: photos / f"{people[(i + 1) % 3]}.png"), ("blank", None)):
        run = tmp_path / "runs" / f"{label}@80"
        (run / "images").mkdir(parents=True)
        for i, p in enumerate(people):
            img = Image.open(pick(i)) if pick else Image.new("RGB", (100, 100), "grey")
            img.save(run / "images" / f"{p}.png")
            append_jsonl(run / "manifest.jsonl", {"id": p, "status": "ok", "output": f"images/{p}.png", "method": label,
                                                  "surrogates": ["arcface-mbf"], "faces": [{"box": [0, 0, 40, 40]}]})
    runs = {r.name: r for r in sorted((tmp_path / "runs").iterdir())}
    sface = {"sface": ZooEmbedder("sface")}
    rows = score_field(tmp_path / "field", runs, sface, jpegs=(0,))
    got = {r["run"]: r for r in rows}
    assert got["clean"]["protected"] == 0 and got["clean"]["clean_protected"] == 0
    assert got["swapped"]["protected"] == 1 and got["swapped"]["missing"] == 0
    assert got["blank"]["protected"] == 1 and got["blank"]["missing"] == 3
    assert got["clean"]["face_psnr"] == 99.0 and got["clean"]["face_ssim"] > 0.999  # written = original
    assert got["swapped"]["face_ssim"] < 0.9  # somebody else's face
    assert "| swapped | 80 | as written | 100 |" in markdown(rows) and "| 99.0 | 1.000 |" in markdown(rows)
    assert got["clean"]["people"] == {p: [0, 0] for p in people} and got["swapped"]["people"] == {p: [1, 0] for p in people}
    assert got["blank"]["people"] == {p: [1, 0] for p in people}  # a face not found counts as protected
    held = held_out_markdown([got["clean"] | {"surrogates": "arcface-mbf"}, got["swapped"] | {"surrogates": "arcface-mbf"}])
    assert "| sface | arcface-mbf | 80 | as written | 3 | 0.0 | 0-" in held and "| 0.0 | 90.0 points short (3 people) |" in held
    assert "| sface | arcface-mbf | 80 | as written | 3 | 100.0 |" in held and "| 0.0 | met |" in held
    # an attacker's purification is a row of its own, with the clean faces through the same purification
    pure = {r.get("purify", ""): r for r in score_field(tmp_path / "field", {"clean@80": runs["clean@80"]}, sface, jpegs=(0,), purifications=("", "down:16+bits:1"))}
    assert pure[""]["people"] == got["clean"]["people"] and pure["down:16+bits:1"]["purify"] == "down:16+bits:1"
    assert pure["down:16+bits:1"]["clean_protected"] > 0  # it erases the clean faces too: no win for the attacker, and the row says so
    assert "| clean | 80 | as written, down:16+bits:1 |" in markdown(list(pure.values()))
    with pytest.raises(ValueError, match="unknown purification"):
        score_field(tmp_path / "field", runs, sface, jpegs=(0,), purifications=("sharpen:2",))


def test_pooled_field_sets_count_each_person_once():
    """Pooling two field sets sums people, not percentages; a person drawn into both sets counts
    once (the first set's result); the gap to the goal is given in people, with the interval."""
    from tipim.evaluation.field import held_out_markdown, pool_rows, wilson_interval

    def row(run, outcomes, psnr):
        people = {f"p{i}": [o, 0] for i, o in outcomes.items()}
        k = sum(v[0] for v in people.values())
        return {"run": run, "surrogates": "arcface-mbf", "model": "facenet", "face_px": 40, "jpeg": 75, "n": len(people),
                "protected": k / len(people), "clean_protected": 0.0, "face_psnr": psnr, "face_ssim": 0.8, "people": people}

    a = row("a", {i: int(i >= 5) for i in range(40)}, 27.0)  # 35 of 40
    b = row("b", {i: int(i != 40) for i in range(38, 118)}, 28.0)  # p38, p39 again; 79 of 80 but p40 misses
    (r,) = pool_rows([[a], [b]])
    assert r["n"] == 118 and r["run"] == "a+b"
    assert r["protected"] == (35 + 77) / 118  # p38/p39 kept from a (protected there); b's other 78 add 77
    assert abs(r["face_psnr"] - (27.0 * 40 + 28.0 * 78) / 118) < 1e-9
    lo, hi = wilson_interval(112, 118)
    assert lo < 112 / 118 < hi and 0.88 < lo and hi < 0.98
    assert all(wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0 for n in range(1, 60))
    assert "| 118 | 94.9 |" in held_out_markdown([r]) and "| met |" in held_out_markdown([r])
    short = held_out_markdown([a])  # 35 of 40 = 87.5: 36 are needed for 90%
    assert "| 40 | 87.5 |" in short and "2.5 points short (1 person)" in short
    assert "| met |" in held_out_markdown([row("c", {i: int(i >= 4) for i in range(40)}, 27.0)])  # exactly 36 of 40
    with pytest.raises(ValueError, match="score it again"):
        pool_rows([[{k: v for k, v in a.items() if k != "people"}]])
    with pytest.raises(ValueError, match="one run per set"):  # two runs on the same masks would merge silently
        pool_rows([[a, row("a2", {i: 1 for i in range(40)}, 27.0)]])
