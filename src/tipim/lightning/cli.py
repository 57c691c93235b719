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


def summarise_photos(output_dir: str | Path, ignored: list | None = None) -> tuple[str, int]:
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
    from tipim.evaluation.selfcheck import describe
    from tipim.inputs import describe_ignored

    skipped = describe_ignored(ignored or [])
    checked = [f["independent"] for r in ok for f in r["faces"] if "independent" in f]
    models = next((r["check_models"] for r in ok if r.get("check_models")), [])
    out = Path(output_dir)
    parts = [f"{len(latest)} photos, {faces} faces: {len(ok)} photos protected, {len(failed)} failed{why}", skipped]
    if faces:
        parts.append(f"{fooled}/{faces} faces now closer to a target than to themselves on the surrogate")
        parts.append(describe(checked, models))
        parts.append(f"max pixel change {mask}/255{codec}")
    line = "; ".join(p for p in parts if p) + f". Outputs: {out / 'images'}, log: {out / 'manifest.jsonl'}"
    return line, len(failed)


AFFINE = {"class_path": "tipim.attack.RandomAffine"}
# --goal hide: the objective weighs leaving the person's own identity 4x reaching the target.
# On photos against unseen recognisers: 80 -> 92% not recognised (away 1 -> 4; 8 is no better),
# at the price of the targeted identity (results/photo_transfer/README.md, "The away weight again").
AWAY = {"hide": 4.0, "target": 1.0}
PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"


def presets() -> dict[str, Path]:
    """The photo presets: ``tipim/presets/<name>.yaml``, model overlays whose first line says what they run."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def preset_summary(path: Path) -> str:
    return path.read_text().splitlines()[0].lstrip("# ").strip()


def photo_parser():
    import argparse

    ap = argparse.ArgumentParser(
        prog="tipim protect",
        description="Protect photos: every face in each photo gets an identity mask (TIP-IM); the rest of the photo is untouched.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"presets ({PRESETS_DIR}; seconds per one-face photo on a 2-core CPU in benchmarks/results/photo_presets.md):\n"
            + "".join(f"  {name:9s} {preset_summary(path)}\n" for name, path in presets().items())
            + "every preset optimises through re-encoding (--robust) unless --no-robust\n\n"
            "examples:\n"
            "  tipim protect me.jpg                        -> protected/images/me.png\n"
            "  tipim protect holiday/ --out safe/ --preset fast --format jpeg --quality 90\n\n"
            "Any model, data or trainer option can follow (e.g. --trainer.accelerator gpu --model.steps 30).\n"
            "Aligned face sets and protocols take a config instead of photos:\n"
            "  tipim protect --config configs/protect.yaml --config configs/method/tipim.yaml --data.faces DIR ...\n"
            "Every such option: tipim protect --help-all"
        ),
    )
    ap.add_argument("photos", nargs="+", help="photo files and/or folders (searched recursively)")
    ap.add_argument("--out", default="protected", help="run folder: images/, manifest.jsonl, config.yaml (default: protected)")
    ap.add_argument("--preset", choices=sorted(presets()), default="balanced", help="fast / balanced (default) / strong, see below")
    ap.add_argument("--robust", action=argparse.BooleanOptionalAction, default=True,
                    help="optimise through JPEG, resizing and shifts, as platforms re-encode photos (default; measured in "
                    "results/photo_transfer: more protection after JPEG 75, about the same as written); --no-robust turns it off")
    ap.add_argument("--goal", choices=sorted(AWAY), default="hide",
                    help="hide (default): recognisers should not match the face to the person (measured: 92%% of small faces "
                    "not recognised by unseen models, against 80%% with target); target: TIP-IM's identity mask as the paper "
                    "weighs it, the face is matched to one of the targets by the surrogate (and less often to the person)")
    ap.add_argument("--format", choices=["png", "jpeg", "webp"], default="png", help="output format (png: lossless, default)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95; WebP 100 = lossless)")
    ap.add_argument("--keep-metadata", action="store_true", help="keep the source EXIF, location included (removed by default)")
    ap.add_argument("--targets", default=None, help="folder of aligned target faces (default: the packaged team photo's 10 faces)")
    ap.add_argument("--faces", choices=["all", "largest", "center"], default="all", help="which faces of a photo to protect (default: all)")
    ap.add_argument("--detect-size", type=int, default=None, metavar="PX",
                    help="faces are searched in a copy of each photo downscaled to this longer side (default 1600: a 12 MP photo "
                    "then finds faces from ~50 px wide); 0 = full resolution, slower but finds smaller faces")
    ap.add_argument("--check", default="auto", help="after writing, models that did not make the mask say whether they still "
                    "recognise each face: auto (every fetched zoo model not used, default), none, or names (a,b)")
    return ap


def photo_args(argv: list[str]) -> list[str]:
    """``tipim protect PHOTO... [--out DIR] [--preset P] ...`` as LightningCLI arguments."""
    import json

    args, rest = photo_parser().parse_known_args(argv)
    transform = {"class_path": "tipim.attack.PostingTransform", "init_args": {"base": AFFINE}} if args.robust else AFFINE
    if args.targets is None:
        from tipim.demo import default_targets

        args.targets = str(default_targets())
    out = ["--config", str(presets()[args.preset]), "--data.photos", json.dumps(args.photos), "--data.targets", args.targets, "--data.output_dir", args.out,
           "--data.output_format", args.format, "--data.quality", str(args.quality), "--data.keep_metadata", str(args.keep_metadata).lower(),
           "--data.multi", args.faces, "--data.check", args.check,
           *(["--data.detect_size", str(args.detect_size)] if args.detect_size is not None else []), "--model.transform", json.dumps(transform), "--seed_everything", "0"]
    out += ["--model.away", str(AWAY[args.goal]), "--model.method", f"tipim-{args.preset}" + ("" if args.robust else "-plain") + ("-target" if args.goal == "target" else "")]
    return out + rest


def _quiet() -> None:
    """A person sees our progress bar, messages and summary: not Lightning's tips, device
    inventory or third-party deprecation warnings that ask nothing of them."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*args parameter is intended to run from within Python.*", ".*custom batch sampler.*", ".*treespec.*",
                    ".*does not have many workers.*", ".*litlogger.*", ".*litmodels.*"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.utils._pytree")


def _lead_rank() -> bool:
    """The process that owns the run folder: rank 0 of torchrun/SLURM, or the process a user
    started (Lightning's DDP launcher gives the processes it starts a LOCAL_RANK)."""
    import os

    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        photo_parser().print_help()
        return 0 if argv else 2
    if argv[0] == "--help-all":
        argv = ["--help"]
    photos = not argv[0].startswith("-")  # `tipim protect photo.jpg ...`
    _quiet()
    from tipim.io import OutputBusyError, RunLock, remove_partials

    lock = None
    try:
        if photos:
            from tipim.lightning.photo_data import PhotoDataModule

            cli = build_cli(photo_args(argv), PhotoDataModule)
        else:
            cli = build_cli(argv)
        if _lead_rank():  # one run per folder; what a killed run left half-written goes first
            lock = RunLock(cli.model.output_dir).acquire()
            remove_partials(cli.model.output_dir)
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except (KeyError, FileNotFoundError, ValueError, OutputBusyError) as e:  # bad config or input: say what and how to fix
        print(f"tipim protect: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    if cli.trainer.is_global_zero:
        if photos:
            line, failed = summarise_photos(cli.model.output_dir, getattr(cli.datamodule, "ignored", []))
        else:
            line, failed = summarise(cli.model.output_dir)
        print(line, flush=True)
        return 1 if failed else 0
    return 0


def build_cli(argv: list[str] | None, datamodule=ProtectDataModule) -> ProtectCLI:
    """``tipim protect``'s LightningCLI for ``argv``, built (model, data, trainer) but not run."""
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
            "enable_progress_bar": False,  # the module's own bar counts faces or photos, not batches
        },
        parser_kwargs={"prog": "tipim protect", "description": "Protect aligned faces with identity masks (TIP-IM and baselines)."},
    )


if __name__ == "__main__":
    sys.exit(main())
