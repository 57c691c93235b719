"""``tipim evaluate``: rank protected probes against an unknown gallery, per evaluation model.

Gallery embeddings are computed once per (model, gallery) and cached; each protection run is
then one forward pass over its probes. Rows go to ``results.json`` and a Markdown table in the
layout of the paper's Tables 3-4 (rows: method x surrogate, columns: evaluation models).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from tipim.evaluation.metrics import RankSuccess, SetMMD
from tipim.evaluation.protocol import load_protocol
from tipim.evaluation.verification import embed_files, load_faces
from tipim.files import read_jsonl
from tipim.zoo.registry import cache_dir


def image_quality(clean_paths: list[Path], protected_paths: list[str]) -> dict[str, float]:
    """PSNR and SSIM on the 8-bit crops and the set MMD: per run, whatever the evaluation model."""
    x_r, x_p = load_faces(clean_paths), load_faces(protected_paths)
    set_mmd = SetMMD()
    set_mmd.update(x_p, x_r)
    return {
        "psnr": float(peak_signal_noise_ratio(x_p * 255, x_r * 255, data_range=255.0)),
        "ssim": float(structural_similarity_index_measure(x_p * 255, x_r * 255, data_range=255.0)),
        "mmd": float(set_mmd.compute()),
    }


def gallery_embeddings(model, name: str, root: Path, gallery: list[dict], batch_size: int = 64) -> torch.Tensor:
    key = hashlib.sha256(json.dumps([name, str(root.resolve()), [g["path"] for g in gallery]]).encode()).hexdigest()[:16]
    path = cache_dir() / "galleries" / f"{name}-{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    emb = embed_files(model, [root / g["path"] for g in gallery], batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(emb, path)
    return emb


def _beside_manifest(run_dir: str | Path, recorded: str) -> Path:
    """A run's images live in its own ``images/`` folder and manifests record them relative to
    the run folder. Older manifests recorded absolute paths: a run folder that was moved or
    copied still reads its own files, never whatever now sits at the recorded path."""
    if not Path(recorded).is_absolute():
        return Path(run_dir) / recorded
    parts = Path(recorded).parts
    if "images" in parts:
        own = Path(run_dir).joinpath("images", *parts[len(parts) - parts[::-1].index("images") :])
        if own.is_file():
            return own
    return Path(recorded)


def read_run(run_dir: str | Path) -> tuple[dict, dict[str, dict]]:
    """The run's settings (from its manifest) and its ``ok`` faces by id."""
    rows = read_jsonl(Path(run_dir) / "manifest.jsonl")
    if not rows:
        raise FileNotFoundError(f"{run_dir}/manifest.jsonl is missing or empty; run tipim protect first")
    latest = {r["id"]: r for r in rows}
    ok = {k: r for k, r in latest.items() if r.get("status") == "ok"}
    for r in ok.values():
        r["output"] = str(_beside_manifest(run_dir, r["output"]))
    first = next(iter(ok.values()), rows[0])
    return {"method": first["method"], "surrogates": first["surrogates"], "run": str(run_dir)}, ok


RESAMPLERS = ("warp", "area")


def attacker_sees(photo: np.ndarray, jpeg: int, aligner, resample: str = "warp", purify: str = ""):
    """What a recognition service takes from a posted photo: re-encoded at JPEG ``jpeg`` (0: as
    written), the first face the aligner keeps (``multi='center'``: nearest the centre), or None.
    ``resample``: ``warp`` crops with the aligner's bilinear warp (a few photo pixels per crop
    pixel are read); ``area`` first shrinks the photo with an area (box) filter until the face is
    at about crop scale, then aligns: a service that downsizes uploads, and a resampler that
    tipim's own crop does not use, so a mask that lived on a sub-grid of pixels would show.
    ``purify``: what the attacker then does to the whole photo (``tipim.evaluation.purify``, e.g.
    ``median:5`` or ``median:3+jpeg:75``)."""
    import io

    from PIL import Image

    from tipim.files import encode_image

    if resample not in RESAMPLERS:
        raise ValueError(f"resample must be one of {RESAMPLERS}, got {resample!r}")
    if jpeg:
        photo = np.array(Image.open(io.BytesIO(encode_image(photo, "jpeg", jpeg))).convert("RGB"))
    if purify:
        from tipim.evaluation.purify import purify as apply

        photo = apply(photo, purify)
    faces, _ = aligner.faces(photo)
    if resample == "area" and faces:
        from tipim.align.paste import photo_pixels_per_crop_pixel

        f = photo_pixels_per_crop_pixel(faces[0].matrix)
        if f > 1.5:
            h, w = photo.shape[:2]
            small = np.asarray(Image.fromarray(photo).resize((max(1, round(w / f)), max(1, round(h / f))), Image.BOX))
            faces, _ = aligner.faces(small)
    return faces[0] if faces else None


def attacker_view(run_dir: str | Path, jpeg: int = 0, aligner=None, purify: str = "") -> Path:
    """What a face-recognition service sees of a photo run: each protected photo re-encoded
    (JPEG ``jpeg``; 0 = as written), detected and aligned again by the evaluator's own detector
    (MTCNN, the face nearest the centre), optionally purified (``purify``: ``attacker_sees``),
    as a derived run folder ``<run>/attacker-jpegQ`` (``attacker-jpegQ-<purify>``) that
    ``evaluate_runs`` ranks like any other. Photos where no face is found are recorded as
    ``no_face`` and count as missing probes. PSNR/SSIM/MMD of the derived run are measured on
    the full photos as written (``quality.json``), not on the re-detected crops."""
    from tipim.files import append_jsonl, load_rgb, read_jsonl, save_png

    info, ok = read_run(run_dir)
    view = Path(run_dir) / (f"attacker-jpeg{jpeg}" + (f"-{purify.replace(':', '').replace('+', '-')}" if purify else ""))
    done = {r["id"] for r in read_jsonl(view / "manifest.jsonl")}
    if aligner is None:
        from tipim.align.aligner import FaceAligner

        aligner = FaceAligner(multi="center")
    label = f"{info['method']} @" + (f"jpeg{jpeg}" if jpeg else "png") + (f" {purify}" if purify else "")
    for pid, r in ok.items():
        if pid in done:
            continue
        face = attacker_sees(load_rgb(r["output"]), jpeg, aligner, purify=purify)
        rec = {"id": pid, "source": r["output"], "method": label, "surrogates": info["surrogates"], "jpeg": jpeg}
        if face is not None:
            out = view / "images" / f"{pid}.png"
            save_png(out, face.crop)
            rec |= {"output": str(out.relative_to(view)), "status": "ok"}
        else:
            rec |= {"output": None, "status": "no_face"}
        append_jsonl(view / "manifest.jsonl", rec)
    qfile = view / "quality.json"
    if not qfile.is_file():
        pairs = [(load_rgb(r["source"]), load_rgb(r["output"])) for r in ok.values()]
        psnr = [float(peak_signal_noise_ratio(torch.from_numpy(b).float(), torch.from_numpy(a).float(), data_range=255.0)) for a, b in pairs]
        ssim = [float(structural_similarity_index_measure(torch.from_numpy(b).permute(2, 0, 1)[None].float(), torch.from_numpy(a).permute(2, 0, 1)[None].float(), data_range=255.0)) for a, b in pairs]
        qfile.write_text(json.dumps({"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "mmd": float("nan"), "quality_on": "full photos"}))
    return view


def evaluate_runs(protocol_path, run_dirs, models: dict, aligned_root=None, batch_size: int = 64) -> list[dict]:
    """``models``: name -> embedder. Returns one row per (run, evaluation model)."""
    proto = load_protocol(protocol_path)
    root = Path(aligned_root or proto["root"])
    names = sorted({e["identity"] for e in proto["gallery"] + proto["probes"] + proto["targets"]})
    label = {n: i for i, n in enumerate(names)}
    g_labels = torch.tensor([label[g["identity"]] for g in proto["gallery"]])
    t_labels = torch.tensor([label[t] for t in proto["target_identities"]])
    probe_by_id = {str(Path(p["path"]).with_suffix("")): p for p in proto["probes"]}
    runs = [read_run(r) for r in run_dirs]
    quality = {}
    for info, ok in runs:
        ids = [i for i in ok if i in probe_by_id]
        qfile = Path(info["run"]) / "quality.json"  # attacker views measure quality on the full photos
        quality[info["run"]] = json.loads(qfile.read_text()) if qfile.is_file() else image_quality([root / probe_by_id[i]["path"] for i in ids], [ok[i]["output"] for i in ids])
    rows = []
    for mname, model in models.items():
        gal = gallery_embeddings(model, mname, root, proto["gallery"], batch_size)
        clean_cache: dict[str, torch.Tensor] = {}
        for info, ok in runs:
            ids = [i for i in ok if i in probe_by_id]
            if not ids:
                raise ValueError(f"{info['run']}: none of its faces are probes of {protocol_path}")
            missing = [i for i in probe_by_id if i not in ok]
            clean_paths = [root / probe_by_id[i]["path"] for i in ids]
            key = "|".join(ids)
            if key not in clean_cache:
                clean_cache[key] = embed_files(model, clean_paths, batch_size)
            e_clean = clean_cache[key]
            e_prot = embed_files(model, [ok[i]["output"] for i in ids], batch_size)
            true = torch.tensor([label[probe_by_id[i]["identity"]] for i in ids])
            prot, clean = RankSuccess(), RankSuccess()
            prot.update(e_prot @ gal.T, g_labels, true, t_labels)
            clean.update(e_clean @ gal.T, g_labels, true, t_labels)
            p, c = prot.compute(), clean.compute()
            rows.append(
                {
                    "method": info["method"],
                    "surrogates": info["surrogates"],
                    "run": info["run"],
                    "eval_model": mname,
                    "white_box": mname in info["surrogates"],
                    "rank1_t": float(p["rank1_t"]),
                    "rank5_t": float(p["rank5_t"]),
                    "rank1_ut": float(p["rank1_ut"]),
                    "rank5_ut": float(p["rank5_ut"]),
                    "clean_rank1": float(1 - c["rank1_ut"]),
                    "clean_rank1_t": float(c["rank1_t"]),
                    "clean_rank5_t": float(c["rank5_t"]),
                    "n_probes": len(ids),
                    "n_probes_missing": len(missing),
                    **quality[info["run"]],
                }
            )
    return rows


def markdown_table(rows: list[dict], title: str = "Identity protection on the LFW protocol") -> str:
    models = list(dict.fromkeys(r["eval_model"] for r in rows))
    keys = list(dict.fromkeys((r["method"], "+".join(r["surrogates"])) for r in rows))
    cell = {(r["method"], "+".join(r["surrogates"]), r["eval_model"]): r for r in rows}
    lines = [
        f"# {title}",
        "",
        "Cells: Rank-1-T / Rank-5-T targeted success (%); * = white box (the evaluation model is a surrogate).",
        "",
        "| method | surrogate | " + " | ".join(models) + " | PSNR | SSIM |",
        "|---|---|" + "---|" * len(models) + "---|---|",
    ]
    for method, sur in keys:
        cells = []
        for m in models:
            r = cell.get((method, sur, m))
            cells.append("-" if r is None else f"{100 * r['rank1_t']:.1f} / {100 * r['rank5_t']:.1f}{' *' if r['white_box'] else ''}")
        any_r = next(r for r in rows if (r["method"], "+".join(r["surrogates"])) == (method, sur))
        lines.append(f"| {method} | {sur} | " + " | ".join(cells) + f" | {any_r['psnr']:.2f} | {any_r['ssim']:.3f} |")
    lines += ["", "Untargeted Rank-1 / Rank-5 success (%):", "", "| method | surrogate | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for method, sur in keys:
        cells = [(lambda r: "-" if r is None else f"{100 * r['rank1_ut']:.1f} / {100 * r['rank5_ut']:.1f}")(cell.get((method, sur, m))) for m in models]
        lines.append(f"| {method} | {sur} | " + " | ".join(cells) + " |")
    base = {r["eval_model"]: r for r in rows}
    lines += ["", "Unprotected probes (baseline): clean Rank-1 accuracy / a target at Rank-1 / at Rank-5 by chance (%):", ""]
    lines += [f"- {m}: {100 * r['clean_rank1']:.1f} / {100 * r['clean_rank1_t']:.1f} / {100 * r['clean_rank5_t']:.1f}" for m, r in base.items()]
    n = {r["n_probes"] for r in rows}
    lines += ["", f"Probes per row: {', '.join(map(str, sorted(n)))}."]
    return "\n".join(lines) + "\n"


__all__ = ["attacker_view", "evaluate_runs", "gallery_embeddings", "markdown_table", "read_run"]
