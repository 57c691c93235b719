"""The adaptive attacker's data: photos of people outside every evaluation set, protected by tipim,
cut into (protected, clean) crop pairs (issue 24).

    python benchmarks/adaptive_attack.py prepare --out runs/adaptive/train --people 240
    tipim protect runs/adaptive/train/photos --out runs/adaptive/train/run --check none
    python benchmarks/adaptive_attack.py pairs --photos runs/adaptive/train/photos --run runs/adaptive/train/run
    python -m tipim.adaptive fit --config configs/adaptive/purifier.yaml      # or adapted.yaml, student.yaml
    python benchmarks/photo_transfer.py score --field runs/field --runs ... --attackers purifier=runs/adaptive/purifier/.../last.ckpt

``prepare`` leaves out everyone in the field sets (``--fields``) and in the LFW protocol drawn
with ``--protocol-seed``.
"""

from __future__ import annotations

import argparse
import os

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--lfw", default="../shared/data/lfw")
    p.add_argument("--out", default="runs/adaptive/train")
    p.add_argument("--people", type=int, default=240)
    p.add_argument("--sizes", type=int, nargs="+", default=[40, 55, 110], help="face widths, one per person in turn")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--fields", nargs="*", default=["results/adaptive/field0.json", "results/photo_transfer/field80/field.json"])
    p.add_argument("--protocol-seed", type=int, default=0)
    q = sub.add_parser("pairs")
    q.add_argument("--photos", default="runs/adaptive/train/photos")
    q.add_argument("--run", default="runs/adaptive/train/run")
    q.add_argument("--out", default=None, help="default: <run>/pairs.pt")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    from tipim.adaptive.pairs import collect_pairs, excluded_people, make_pair_set

    if a.cmd == "prepare":
        ex = excluded_people(a.lfw, a.fields, a.protocol_seed)
        m = make_pair_set(a.lfw, a.out, a.people, a.sizes, a.seed, ex)
        print(f"{a.out}/photos: {len(m['people'])} people, none of the {len(ex)} in {a.fields} or the protocol")
    else:
        pairs = collect_pairs(a.photos, a.run, a.out)
        d = (pairs["protected"].int() - pairs["clean"].int()).abs().float()
        print(f"{len(pairs['ids'])} pairs; mean |protected - clean| {d.mean():.2f} levels (crop pixels)")


if __name__ == "__main__":
    main()
