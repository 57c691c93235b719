"""``tipim protect``: a LightningCLI over ProtectionModule and ProtectDataModule.

Configs compose as usual: ``--config configs/protect.yaml --config configs/method/mim.yaml
--model.steps 20``. The resolved config is written to ``<output_dir>/config.yaml``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from tipim.io import read_jsonl
from tipim.lightning.data import ProtectDataModule
from tipim.lightning.module import ProtectionModule


class RunConfigSaver(SaveConfigCallback):
    """Write the resolved config beside the run's outputs and give it to every logger (W&B
    shows it as the run config), on rank 0."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            out = Path(pl_module.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, out / "config.yaml", skip_none=False, overwrite=True, multifile=False)
            flat = {k: v for k, v in self.config.as_flat().__dict__.items() if not k.startswith("trainer.callbacks")}
            for logger in trainer.loggers:
                logger.log_hyperparams({k: str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v for k, v in flat.items()})


class ProtectCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.output_dir", "model.output_dir")


def summarise(output_dir: str | Path) -> tuple[str, int]:
    """One line for a person, and how many faces failed."""
    latest = {r["id"]: r for r in read_jsonl(Path(output_dir) / "manifest.jsonl")}
    status = Counter(r["status"] for r in latest.values())
    fooled = sum(1 for r in latest.values() if r.get("surrogate_success"))
    worst = max((r.get("linf") or 0 for r in latest.values()), default=0)
    line = (
        f"{len(latest)} faces: {status.get('ok', 0)} protected, {status.get('error', 0)} failed; "
        f"{fooled} now closer to a target than to themselves on the surrogate; "
        f"max pixel change {worst}/255. Outputs: {output_dir}/images, log: {output_dir}/manifest.jsonl"
    )
    return line, status.get("error", 0)


def summarise_photos(output_dir: str | Path) -> tuple[str, int]:
    latest = {r["id"]: r for r in read_jsonl(Path(output_dir) / "manifest.jsonl")}
    ok = [r for r in latest.values() if r["status"] == "ok"]
    failed = [r for r in latest.values() if r["status"] != "ok"]
    faces = sum(len(r["faces"]) for r in ok)
    fooled = sum(f["surrogate_success"] for r in ok for f in r["faces"])
    kinds = Counter(r["status"] for r in failed)
    why = f" ({', '.join(f'{n} {k.replace(chr(95), chr(32))}' for k, n in sorted(kinds.items()))})" if kinds else ""
    mask = max((r["linf_before_encoding"] for r in ok), default=0)
    decoded = max((r["linf"] for r in ok), default=0)
    codec = f" (the lossy codec adds its own error: up to {decoded}/255 in the decoded file)" if decoded > mask else ""
    out = Path(output_dir)
    line = (
        f"{len(latest)} photos, {faces} faces: {len(ok)} photos protected, {len(failed)} failed{why}; "
        f"{fooled}/{faces} faces now closer to a target than to themselves on the surrogate; "
        f"max pixel change {mask}/255{codec}. Outputs: {out / 'images'}, log: {out / 'manifest.jsonl'}"
    )
    return line, len(failed)


TIPIM = {"method": "tipim", "momentum": 1.0, "gamma": 1.0}
AFFINE = {"class_path": "tipim.attack.RandomAffine"}
PRESETS = {  # for people who do not know the method; timings in benchmarks/results/photo_presets.md
    "fast": TIPIM | {"steps": 20, "surrogates": ["arcface-mbf"], "selector": {"class_path": "tipim.attack.GreedyInsertion", "init_args": {"every": 5}}},
    "balanced": TIPIM | {"steps": 50, "surrogates": ["arcface-mbf"], "selector": {"class_path": "tipim.attack.GreedyInsertion", "init_args": {"every": 2}}},
    "strong": TIPIM | {"steps": 50, "surrogates": ["arcface-mbf", "sface"], "selector": {"class_path": "tipim.attack.GreedyInsertion"}, "robust": True},
}


def photo_args(argv: list[str]) -> list[str]:
    """``tipim protect PHOTO... [--out DIR] [--preset P] ...`` as LightningCLI arguments."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="tipim protect", description="Protect photos: every face in each photo gets an identity mask.")
    ap.add_argument("photos", nargs="+", help="photo files and/or folders (JPEG, PNG, WebP)")
    ap.add_argument("--out", default="protected", help="run folder: images/, manifest.jsonl, config.yaml")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="balanced", help="fast / balanced (default) / strong")
    ap.add_argument("--robust", action="store_true", help="optimise through JPEG, resizing and shifts (survives re-compression)")
    ap.add_argument("--format", choices=["png", "jpeg", "webp"], default="png", help="output format (png: lossless, default)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    ap.add_argument("--keep-metadata", action="store_true", help="keep the source EXIF, location included (removed by default)")
    ap.add_argument("--targets", default=None, help="folder of aligned target faces (default: the packaged team photo's 10 faces)")
    ap.add_argument("--faces", choices=["all", "largest", "center"], default="all", help="which faces of a photo to protect")
    args, rest = ap.parse_known_args(argv)
    preset = dict(PRESETS[args.preset])
    robust = preset.pop("robust", False) or args.robust
    transform = {"class_path": "tipim.attack.PostingTransform", "init_args": {"base": AFFINE}} if robust else AFFINE
    if args.targets is None:
        from tipim.demo import default_targets

        args.targets = str(default_targets())
    out = ["--data.photos", json.dumps(args.photos), "--data.targets", args.targets, "--data.output_dir", args.out,
           "--data.output_format", args.format, "--data.quality", str(args.quality), "--data.keep_metadata", str(args.keep_metadata).lower(),
           "--data.multi", args.faces, "--trainer.enable_progress_bar", "false", "--model.transform", json.dumps(transform),
           "--seed_everything", "0"]
    method = f"tipim-{args.preset}" + ("-robust" if robust and args.preset != "strong" else "")
    for k, v in (preset | {"method": method}).items():
        out += [f"--model.{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    return out + rest


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
    argv = list(sys.argv[1:] if argv is None else argv)
    photos = bool(argv) and not argv[0].startswith("-")  # `tipim protect photo.jpg ...`
    try:
        if photos:
            import logging

            from tipim.lightning.photos import PhotoDataModule

            for name in ("lightning.pytorch", "lightning.fabric"):  # a person sees the bar and the summary
                logging.getLogger(name).setLevel(logging.WARNING)
            warnings.filterwarnings("ignore", message=".*treespec.*")

            cli = _build(photo_args(argv), PhotoDataModule)
        else:
            cli = _build(argv)
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except (KeyError, FileNotFoundError, ValueError) as e:  # bad config or input: say what and how to fix
        print(f"tipim protect: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    if cli.trainer.is_global_zero:
        line, failed = (summarise_photos if photos else summarise)(cli.model.output_dir)
        print(line, flush=True)
        return 1 if failed else 0
    return 0


def _build(argv: list[str] | None, datamodule=ProtectDataModule) -> ProtectCLI:
    return ProtectCLI(
        ProtectionModule,
        datamodule,
        run=False,
        args=argv,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "inference_mode": False,  # the attack needs gradients inside predict
            "use_distributed_sampler": False,  # ProtectDataModule deals whole batches to ranks
            "logger": False,
            "enable_model_summary": False,
        },
        parser_kwargs={"description": "Protect aligned faces with identity masks (TIP-IM and baselines)."},
    )


if __name__ == "__main__":
    sys.exit(main())
