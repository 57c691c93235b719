"""Protection as a user meets it: ordinary photos with faces of a chosen size, protected as whole
photos, then seen through an attacker's pipeline (re-encoded, re-detected, re-aligned) by each
recogniser, and ranked against the person's own other photos among many other faces.

``make_field_set`` draws the people and writes their probe photos, downscaled so that faces are
about ``size`` pixels wide; ``score_field`` says, per run, face size, re-encoding and model, how
often the person is *not* the Rank-1 identity (the untargeted protection rate), next to the
same rate for the unprotected photos (the clean baseline, near 0 for a working recogniser).
A face the attacker's detector cannot find counts as protected and is reported separately.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tipim.evaluation.verification import embed_crops
from tipim.files import load_rgb, read_jsonl, save_png


def make_field_set(lfw: str | Path, out: str | Path, probes: int = 50, distractors: int = 500, sizes=(40, 55, 110), seed: int = 0, gallery_per_person: int = 5) -> dict:
    """People with >= 3 photos: the first is the probe (written at each face size), up to
    ``gallery_per_person`` others go to the gallery; ``distractors`` other people add one photo
    each. Writes ``<out>/photos-<size>/<person>.png`` and ``<out>/field.json``."""
    from tipim.align.aligner import FaceAligner

    lfw, out = Path(lfw), Path(out)
    people = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    rng = random.Random(seed)
    many = [p for p in people if len(list((lfw / p).glob("*.jpg"))) >= 3]
    chosen = sorted(rng.sample(many, probes))
    others = sorted(rng.sample([p for p in people if p not in set(chosen)], distractors))
    aligner = FaceAligner(multi="center")
    field = {"seed": seed, "lfw": str(lfw), "sizes": list(sizes), "probes": [], "gallery": []}
    for person in chosen:
        files = sorted((lfw / person).glob("*.jpg"))
        photo = load_rgb(files[0])
        faces, _ = aligner.faces(photo)
        if not faces:
            continue
        width = faces[0].box[2] - faces[0].box[0]
        for size in sizes:
            write_at_face_size(photo, width, size, out / f"photos-{size}" / f"{person}.png")
        field["probes"].append({"identity": person, "source": str(files[0]), "face_width": round(width, 1)})
        field["gallery"] += [{"identity": person, "path": str(p)} for p in files[1 : 1 + gallery_per_person]]
    for person in others:
        field["gallery"].append({"identity": person, "path": str(sorted((lfw / person).glob("*.jpg"))[0])})
    (out / "field.json").write_text(json.dumps(field, indent=1) + "\n")
    return field


def write_at_face_size(photo: np.ndarray, face_width: float, size: int, path: Path) -> None:
    """The photo downscaled (Lanczos) so that a face ``face_width`` pixels wide becomes ``size``."""
    f = size / face_width
    img = Image.fromarray(photo).resize((max(1, round(photo.shape[1] * f)), max(1, round(photo.shape[0] * f))), Image.LANCZOS)
    save_png(path, np.asarray(img))


def _gallery(field: dict, model, name: str, cache: Path, aligner) -> tuple[torch.Tensor, list[str]]:
    """Gallery embeddings of one model (cached), from crops aligned once for every model."""
    path = cache / f"gallery-{name}.pt"
    if not path.is_file():
        crops_path = cache / "gallery-crops.pt"
        if crops_path.is_file():
            saved = torch.load(crops_path, weights_only=True)
        else:
            crops, ids = [], []
            for g in field["gallery"]:
                faces, _ = aligner.faces(load_rgb(g["path"]))
                if faces:
                    crops.append(torch.from_numpy(faces[0].crop).permute(2, 0, 1))
                    ids.append(g["identity"])
            saved = {"crops": torch.stack(crops), "ids": ids}
            torch.save(saved, crops_path)
        torch.save({"emb": embed_crops(model, saved["crops"]), "ids": saved["ids"]}, path)
    saved = torch.load(path, weights_only=True)
    return saved["emb"], saved["ids"]


def attacker_crops(photos: list[np.ndarray], jpeg: int, aligner, resample: str = "warp", purify: str = "") -> list[torch.Tensor | None]:
    """``attacker_sees`` for each photo, as (3, 112, 112) uint8 crops (None: no face found)."""
    from tipim.evaluation.evaluate import attacker_sees

    faces = [attacker_sees(img, jpeg, aligner, resample, purify) for img in photos]
    return [torch.from_numpy(f.crop).permute(2, 0, 1) if f is not None else None for f in faces]


def rank1_protected(probe: torch.Tensor, identity: str, gallery: torch.Tensor, ids: list[str]) -> bool:
    """True when the gallery image most similar to ``probe`` is someone else."""
    return ids[int((gallery @ probe).argmax())] != identity


def _in_box(box) -> tuple[slice, slice]:
    """Row and column slices of a face's (x0, y0, x1, y1) box, clipped at the photo's top-left."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return slice(max(0, y0), y1), slice(max(0, x0), x1)


def face_psnr(a: np.ndarray, b: np.ndarray, box) -> float:
    rows, cols = _in_box(box)
    d = (a[rows, cols].astype(np.float64) - b[rows, cols].astype(np.float64)) ** 2
    mse = float(d.mean()) if d.size else 0.0
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def face_ssim(a: np.ndarray, b: np.ndarray, box, band: int = 256) -> float:
    """SSIM (torchmetrics, Gaussian window 11, on 8-bit RGB) over one face's box; NaN for a box
    narrower than the window. A tall box is measured ``band`` rows at a time, each band with the
    5 rows around it that its windows read: the same SSIM map (torchmetrics on a 2,000-px face at
    once takes tens of GB)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    rows, cols = _in_box(box)
    a, b = a[rows, cols], b[rows, cols]
    if min(a.shape[:2]) < 11:
        return float("nan")
    t = lambda im: torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].double()  # noqa: E731
    if len(a) <= band:
        return float(structural_similarity_index_measure(t(b), t(a), data_range=255.0))
    total, halo = 0.0, 5
    for y0 in range(0, len(a), band):
        y1 = min(len(a), y0 + band)
        h0, h1 = max(0, y0 - halo), min(len(a), y1 + halo)
        _, ssim_map = structural_similarity_index_measure(t(b[h0:h1]), t(a[h0:h1]), data_range=255.0, reduction="none", return_full_image=True)
        total += float(ssim_map[..., y0 - h0 : y1 - h0, :].sum()) / 3  # the band's rows of the map, averaged over channels
    return total / (len(a) * a.shape[1])


def score_field(field_dir: str | Path, runs: dict[str, str | Path], models: dict, jpegs=(0, 75), resamplers=("warp",), purifications=("",)) -> list[dict]:
    """``runs``: label -> photo run folder made from ``photos-<size>`` (label ``name@size``).
    One row per (run, jpeg, attacker resampler, attacker purification, model): protection rate,
    the clean rate on the same photos through the same pipeline (a purification that also erases
    clean faces is no win for the attacker), missing faces, and the mean PSNR and SSIM over the
    protected face boxes."""
    from tipim.align.aligner import FaceAligner
    from tipim.evaluation.evaluate import read_run
    from tipim.evaluation.purify import parse

    for spec in purifications:  # a bad spec stops here, before any photo is read
        parse(spec)
    field_dir = Path(field_dir)
    field = json.loads((field_dir / "field.json").read_text())
    aligner = FaceAligner(multi="center")
    galleries = {m: _gallery(field, model, m, field_dir, aligner) for m, model in models.items()}
    rows = []
    clean_seen: dict[tuple, torch.Tensor | None] = {}  # (size, jpeg, resampler, person): the unprotected photos look the same in every run
    for label, run in runs.items():
        size = int(label.rsplit("@", 1)[1])
        _, ok = read_run(run)
        tried = {r["id"] for r in read_jsonl(Path(run) / "manifest.jsonl")}  # a run may cover a subset
        people = [p["identity"] for p in field["probes"] if p["identity"] in tried]
        combos = [(q, rs, pu) for q in jpegs for rs in resamplers for pu in purifications]
        crops: dict[tuple, list] = {c: [] for c in combos}
        psnr, ssim = [], []
        for p in people:  # one photo in memory at a time: large photos are tens of megapixels
            clean = load_rgb(field_dir / f"photos-{size}" / f"{p}.png")
            r = ok.get(p)
            img = load_rgb(r["output"]) if r is not None else clean  # not protected: the user would post the photo as it is
            if r is not None:
                psnr += [face_psnr(clean, img, f["box"]) for f in r["faces"]]
                ssim += [face_ssim(clean, img, f["box"]) for f in r["faces"]]
            for c in combos:
                if (size, *c, p) not in clean_seen:
                    clean_seen[(size, *c, p)] = attacker_crops([clean], c[0], aligner, c[1], c[2])[0]
                crops[c].append(attacker_crops([img], c[0], aligner, c[1], c[2])[0])
            del clean, img
        for q, resample, pure in combos:
            seen, seen_clean = crops[(q, resample, pure)], [clean_seen[(size, q, resample, pure, p)] for p in people]
            for m, model in models.items():
                g, ids = galleries[m]
                found = [(p, c) for p, c in zip(people, seen) if c is not None]
                emb = embed_crops(model, torch.stack([c for _, c in found])) if found else torch.zeros(0)
                prot = {p: rank1_protected(e, p, g, ids) for (p, _), e in zip(found, emb)}
                cfound = [(p, c) for p, c in zip(people, seen_clean) if c is not None]
                cemb = embed_crops(model, torch.stack([c for _, c in cfound])) if cfound else torch.zeros(0)
                cprot = {p: rank1_protected(e, p, g, ids) for (p, _), e in zip(cfound, cemb)}
                # per person, [protected, clean protected] (a face not found counts as protected): lets sets be pooled
                outcome = {p: [int(prot.get(p, True)), int(cprot.get(p, True))] for p in people}
                rows.append({
                    "run": label.rsplit("@", 1)[0], "face_px": size, "jpeg": q, **({"resample": resample} if resample != "warp" else {}),
                    **({"purify": pure} if pure else {}),
                    "model": m, "n": len(people),
                    **_rates(outcome), "missing": len(people) - len(found),
                    "unprotected_photos": sum(p not in ok for p in people), "face_psnr": float(np.mean(psnr)) if psnr else None,
                    "face_ssim": float(np.nanmean(ssim)) if ssim and not np.isnan(ssim).all() else None,
                    "people": outcome,
                })
    return rows


def _rates(people: dict[str, list[int]]) -> dict[str, float]:
    """The protection and clean rates of per-person ``[protected, clean protected]`` results."""
    n = len(people)
    return {"protected": sum(v[0] for v in people.values()) / n, "clean_protected": sum(v[1] for v in people.values()) / n}


def markdown(rows: list[dict], held_out: dict[str, list[str]] | None = None) -> str:
    """Protection rate (%) per run, face size and re-encoding (rows) and model (columns);
    ``held_out``: run -> its surrogates, whose cells are starred (white box)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| run | face px | JPEG | " + " | ".join(models) + " | clean (" + ", ".join(models) + ") | face PSNR | face SSIM |",
             "|---|---|---|" + "---|" * len(models) + "---|---|---|"]
    keys = list(dict.fromkeys((r["run"], r["face_px"], r["jpeg"], r.get("resample"), r.get("purify")) for r in rows))
    for key in keys:
        cells = {r["model"]: r for r in rows if (r["run"], r["face_px"], r["jpeg"], r.get("resample"), r.get("purify")) == key}
        run, px = key[:2]
        star = lambda m: "*" if held_out and m in held_out.get(run, []) else ""  # noqa: E731
        vals = " | ".join(f"{100 * cells[m]['protected']:.0f}{star(m)}" for m in models)
        clean = ", ".join(f"{100 * cells[m]['clean_protected']:.0f}" for m in models)
        lines.append(f"| {run} | {px} | {_seen(next(iter(cells.values())))} | {vals} | {clean} | {_quality(next(iter(cells.values())))} |")
    return "\n".join(lines) + "\n"


def held_out_markdown(rows: list[dict], goal: float = 0.9) -> str:
    """The leave-one-out table: one row per (run, face size, re-encoding) with the score of the
    run's held-out model only (rows must hold just that model), how far it is from ``goal`` (in
    points and in people: how many more would have to be protected) and its 90% Wilson interval."""
    lines = ["| held-out model | masks made on | face px | JPEG | people | protected (%) | 90% interval | clean (%) | goal | face PSNR | face SSIM |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, k = r["n"], protected_people(r)
        short = math.ceil(goal * n - 1e-9) - k
        gap = "met" if short <= 0 else f"{100 * (goal - k / n):.1f} points short ({short} {'person' if short == 1 else 'people'})"
        lo, hi = wilson_interval(k, n)
        lines.append(f"| {r['model']} | {r.get('surrogates', '?')} | {r['face_px']} | {_seen(r)} | {n} | "
                     f"{100 * k / n:.1f} | {100 * lo:.0f}-{100 * hi:.0f} | {100 * r['clean_protected']:.1f} | {gap} | {_quality(r)} |")
    return "\n".join(lines) + "\n"


def purification_markdown(rows: list[dict], goal: float = 0.9, pays: float = 0.9) -> str:
    """One line per (attacker's transform, model): per face size, the protection rate (%) and, in
    brackets, the attacker's Rank-1 (%) on the unprotected photos through the same transform.
    A cell counts against ``goal`` only where that clean Rank-1 is at least ``pays``: a transform
    that also erases clean faces is no attack. Such cells below the goal are bold, and the last
    column gives each one's shortfall in people; a final line counts the cells."""
    sizes = sorted({r["face_px"] for r in rows})
    keys = list(dict.fromkeys((_seen(r), r["model"]) for r in rows))
    lines = ["| attacker does | model | " + " | ".join(f"{px} px" for px in sizes) + " | below the goal where it pays |",
             "|---|---|" + "---|" * len(sizes) + "---|"]
    counted = met = 0
    for seen, model in keys:
        cells, misses = [], []
        for px in sizes:
            r = next((r for r in rows if (_seen(r), r["model"], r["face_px"]) == (seen, model, px)), None)
            if r is None:
                cells.append("-")
                continue
            n, k = r["n"], protected_people(r)
            clean = 1 - r["clean_protected"]
            cell = f"{100 * k / n:.1f} ({100 * clean:.0f})"
            if clean >= pays - 1e-9:
                counted += 1
                short = math.ceil(goal * n - 1e-9) - k
                if short > 0:
                    cell = f"**{cell}**"
                    misses.append(f"{px} px: {short} {'person' if short == 1 else 'people'} short")
                else:
                    met += 1
            cells.append(cell)
        lines.append(f"| {seen} | {model} | " + " | ".join(cells) + " | " + ("; ".join(misses) or "none") + " |")
    lines.append(f"\nCells where the transform pays (clean Rank-1 >= {100 * pays:.0f}%): {counted}; at >= {100 * goal:.0f}% protection: {met}.")
    return "\n".join(lines) + "\n"


def protected_people(row: dict) -> int:
    """How many of a row's people were protected: counted from its per-person results, or from
    its rate (rows scored before those were recorded), which must then be a whole number of people."""
    if "people" in row:
        return sum(v[0] for v in row["people"].values())
    k = round(row["protected"] * row["n"])
    if abs(row["protected"] * row["n"] - k) > 1e-6:
        raise ValueError(f"rate {row['protected']} of {row['n']} people is not a whole number of people")
    return k


def wilson_interval(k: int, n: int, z: float = 1.645) -> tuple[float, float]:
    """Wilson score interval of a rate k / n (z = 1.645: 90%): about +-7 points on 40 people
    near 90%, +-4 on 117."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"an interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if k == 0 else mid - half), (1.0 if k == n else mid + half)


def pool_rows(sets: list[list[dict]]) -> list[dict]:
    """Held-out rows of several field sets as one: per (masks made on, model, face size,
    re-encoding), each person counted once (a person in two sets keeps the first set's result)
    and the rates recomputed from the people; face PSNR/SSIM averaged over the sets, each weighted
    by the people it adds. Rows need the per-person results that ``score_field`` records; a set
    may hold one run per key (the caller leaves out white-box rows)."""
    pooled: dict[tuple, dict] = {}
    for i, rows in enumerate(sets):
        seen = set()
        for r in rows:
            if "people" not in r:
                raise ValueError(f"run {r.get('run')!r} ({r.get('face_px')} px, {r.get('model')}) has no per-person results: score it again with this version")
            key = (r.get("surrogates", "?"), r["model"], r["face_px"], r["jpeg"], r.get("resample"), r.get("purify"))
            if key in seen:
                raise ValueError(f"set {i + 1} holds two runs of masks made on {key[0]} scored by {key[1]} at {key[2]} px, JPEG {key[3] or 'none'}: pool one run per set")
            seen.add(key)
            acc = pooled.setdefault(key, {"runs": [], "people": {}, "face_psnr": [], "face_ssim": []})
            acc["runs"].append(r["run"])
            new = {who: v for who, v in r["people"].items() if who not in acc["people"]}
            acc["people"].update(new)
            for metric in ("face_psnr", "face_ssim"):
                if r.get(metric) is not None:
                    acc[metric].append((r[metric], len(new)))
    out = []
    for (surrogates, model, px, jpeg, resample, pure), acc in pooled.items():
        people = acc["people"]
        n = len(people)
        row = {"run": "+".join(acc["runs"]), "surrogates": surrogates, "model": model, "face_px": px, "jpeg": jpeg,
               **({"resample": resample} if resample else {}), **({"purify": pure} if pure else {}), "n": n, **_rates(people)}
        for metric in ("face_psnr", "face_ssim"):
            total = sum(c for _, c in acc[metric])
            row[metric] = sum(v * c for v, c in acc[metric]) / total if total else None
        out.append(row | {"people": people})
    return out


def _seen(row: dict) -> str:
    """How the attacker re-encoded, purified and cropped the photo: ``75``, ``as written``,
    ``75, area resize``, ``as written, median:5``."""
    q = str(row["jpeg"] or "as written")
    return q + (f", {row['purify']}" if row.get("purify") else "") + (f", {row['resample']} resize" if row.get("resample") else "")


def _quality(row: dict) -> str:
    """``PSNR | SSIM`` cells (rows scored before SSIM was measured show ``-``)."""
    psnr, ssim = row.get("face_psnr"), row.get("face_ssim")
    return (f"{psnr:.1f}" if psnr else "-") + " | " + (f"{ssim:.3f}" if ssim else "-")


__all__ = ["attacker_crops", "face_psnr", "face_ssim", "held_out_markdown", "make_field_set", "markdown", "pool_rows", "purification_markdown", "protected_people", "rank1_protected", "score_field", "wilson_interval"]
