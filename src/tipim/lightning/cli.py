"""``tipim protect``: one jsonargparse parser for photos, folders, aligned-face sets and protocols.

What sets an option, lowest first: the preset (``--preset``, balanced by default), ``--goal`` and
``--robust``; then ``--config`` files and ``--model.*`` / ``--data.*`` / ``--trainer.*`` options,
in the order given. Photos given as arguments are protected in place of the ``data`` of a config.
The resolved config is written to ``<output_dir>/config.yaml``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import yaml
from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback

from tipim.lightning.data import RunData
from tipim.lightning.module import ProtectionModule
from tipim.lightning.photo_data import NO_PHOTOS, PhotoDataModule

PHOTOS = f"{PhotoDataModule.__module__}.{PhotoDataModule.__qualname__}"
TRAINER_DEFAULTS = {
    "inference_mode": False,  # the attack needs gradients inside predict
    "use_distributed_sampler": False,  # RunData deals whole batches to ranks
    "logger": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,  # the module's own bar counts faces or photos, not batches
}
AFFINE = {"class_path": "tipim.attack.RandomAffine"}
ROBUST = {"class_path": "tipim.attack.PostingTransform", "init_args": {"base": AFFINE}}
# --goal hide: the objective weighs leaving the person's own identity 4x reaching the target.
# On photos against unseen recognisers: 80 -> 92% not recognised (away 1 -> 4; 8 is no better),
# at the price of the targeted identity (results/photo_transfer/README.md, "The away weight again").
AWAY = {"hide": 4.0, "target": 1.0}
PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
# the shortcuts for people protecting photos, and the PhotoDataModule argument each sets
PHOTO_FLAGS = {"out": "output_dir", "targets": "targets", "format": "output_format", "quality": "quality",
               "keep_metadata": "keep_metadata", "faces": "multi", "detect_size": "detect_size", "check": "check"}


def presets() -> dict[str, Path]:
    """The presets: ``tipim/presets/<name>.yaml``, model overlays whose first line says what they run."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def preset_summary(path: Path) -> str:
    return path.read_text().splitlines()[0].lstrip("# ").strip()


def preset_defaults(preset: str, goal: str, robust: bool) -> dict:
    """The model defaults that ``--preset``, ``--goal`` and ``--robust`` stand for."""
    model = yaml.safe_load(presets()[preset].read_text())["model"]
    model |= {"away": AWAY[goal], "transform": ROBUST if robust else AFFINE,
              "method": f"tipim-{preset}" + ("" if robust else "-plain") + ("-target" if goal == "target" else "")}
    return {f"model.{k}": v for k, v in model.items()}


class RunConfigSaver(SaveConfigCallback):
    """Write the resolved config beside the run's outputs and give it to every logger (W&B
    shows it as the run config), on rank 0."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            out = Path(pl_module.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, out / "config.yaml", skip_unset=False, overwrite=True, multifile=False)
            flat = {k: v for k, v in self.config.as_flat().__dict__.items() if not k.startswith("trainer.callbacks")}
            for logger in trainer.loggers:
                logger.log_hyperparams({k: str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v for k, v in flat.items()})


class ShortHelp(argparse.Action):
    """``--help`` shows what a person protecting photos needs; ``--help-all`` every option."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(short_help(parser), end="")
        parser.exit()


def short_help(parser) -> str:
    group = next(g for g in parser._action_groups if g.title == "photos")
    f = argparse.RawDescriptionHelpFormatter(prog="tipim protect", max_help_position=30)
    f.add_usage("tipim protect PHOTO... [options]", [], [])
    f.add_text(parser.description)
    f.start_section(group.title)
    f.add_arguments(group._group_actions)
    f.end_section()
    f.add_text(parser.epilog)
    return f.format_help()


def protect_parser() -> LightningArgumentParser:
    p = LightningArgumentParser(
        prog="tipim protect",
        usage="tipim protect PHOTO... [options]   (tipim protect --help: the options for photos; --help-all: every option)",
        description="Protect photos: every face in each photo gets an identity mask (TIP-IM); the rest of the photo is "
        "untouched. Aligned face sets and protocols take a --config instead of photos.",
        epilog=(
            f"presets ({PRESETS_DIR}; seconds per one-face photo on a 2-core CPU in benchmarks/results/photo_presets.md):\n"
            + "".join(f"  {name:9s} {preset_summary(path)}\n" for name, path in presets().items())
            + "\nexamples:\n"
            "  tipim protect me.jpg                        -> protected/images/me.png\n"
            "  tipim protect holiday/ --out safe/ --preset fast --format jpeg --quality 90\n"
            "  tipim protect me.jpg --model.steps 30 --trainer.accelerator gpu\n"
            "  tipim protect --config configs/protect.yaml --config configs/method/tipim.yaml --data.faces DIR\n\n"
            "--preset, --goal and --robust set the defaults; --config files and --model/--data/--trainer options\n"
            "override them, in the order given; the photos and the flags above are applied last.\n"
            "Every option: tipim protect --help-all; the data options: tipim protect --data.help PhotoDataModule\n"
            "(photos) or --data.help ProtectDataModule (aligned faces, what configs/protect.yaml chooses)"
        ),
        add_help=False,
    )
    p.add_argument("-h", "--help", action=ShortHelp, help="the options for photos (this)")
    p.add_argument("--help-all", action="help", help="every model, data and trainer option")
    g = p.add_argument_group("photos")
    g.add_argument("photos", nargs="*", help="photo files and/or folders (searched recursively), or a protocol.json")
    g.add_argument("--out", default=None, help="run folder: images/, manifest.jsonl, config.yaml (default: protected)")
    g.add_argument("--preset", choices=sorted(presets()), default="balanced", help="fast / balanced (default) / strong, see below")
    g.add_argument("--robust", action=argparse.BooleanOptionalAction, default=True,
                   help="optimise through JPEG, resizing and shifts, as platforms re-encode photos (default; measured in "
                   "results/photo_transfer: more protection after JPEG 75, about the same as written); --no-robust turns it off")
    g.add_argument("--goal", choices=sorted(AWAY), default="hide",
                   help="hide (default): recognisers should not match the face to the person (measured: 92 percent of small faces "
                   "not recognised by unseen models, against 80 with target); target: TIP-IM's identity mask as the paper "
                   "weighs it, the face is matched to one of the targets by the surrogate (and less often to the person)")
    g.add_argument("--format", choices=["png", "jpeg", "webp"], default=None, help="output format (png: lossless, default)")
    g.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality (default 95; WebP 100 = lossless)")
    g.add_argument("--keep-metadata", action="store_true", default=None, help="keep the source EXIF, location included (removed by default)")
    g.add_argument("--targets", default=None, help="folder of aligned target faces (default: the packaged team photo's 10 faces)")
    g.add_argument("--faces", choices=["all", "largest", "center"], default=None, help="which faces of a photo to protect (default: all)")
    g.add_argument("--detect-size", type=int, default=None, metavar="PX",
                   help="faces are searched in a copy of each photo downscaled to this longer side (default 1600: a 12 MP photo "
                   "then finds faces from ~50 px wide); 0 = full resolution, slower but finds smaller faces")
    g.add_argument("--check", default=None, help="after writing, models that did not make the mask say whether they still "
                   "recognise each face: auto (every fetched zoo model not used, default), none, or names (a,b)")
    p.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML config (configs/protect.yaml for aligned faces; "
                   "configs/method/*.yaml for the paper's methods); several are applied in order")
    p.add_argument("--seed_everything", type=Union[bool, int], default=0, help="seed of the run (True: a random one)")
    p.add_lightning_class_args(Trainer, "trainer")
    p.set_defaults({f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()})
    p.add_lightning_class_args(ProtectionModule, "model")
    p.add_lightning_class_args(RunData, "data", subclass_mode=True)
    p.link_arguments("data.init_args.output_dir", "model.output_dir")
    p.set_defaults(preset_defaults(p.get_default("preset"), p.get_default("goal"), p.get_default("robust"))
                   | {"data": {"class_path": PHOTOS, "init_args": {"output_dir": "protected"}}})
    return p


def resolve(parser, cfg: Namespace, reparse, need_photos: bool = True) -> Namespace:
    """Apply what ``--preset``/``--goal``/``--robust`` chose as defaults (``reparse`` parses again
    with them), then the photo arguments and flags, which override the data's arguments."""
    chosen = (cfg.preset, cfg.goal, cfg.robust)
    if chosen != tuple(parser.get_default(k) for k in ("preset", "goal", "robust")):  # the parser's defaults are the default layer
        parser.set_defaults(preset_defaults(*chosen))
        cfg = reparse()
    data, photos = cfg.data.init_args, _is_photos(cfg.data.class_path)
    if cfg.photos:
        if not photos:
            raise ValueError(f"photos were given, but the config's data is {cfg.data.class_path}: protect either photos "
                             "(tipim protect PHOTO...) or what the config names (drop the photos)")
        data.photos = cfg.photos
    for flag, key in PHOTO_FLAGS.items():
        value = cfg[flag]
        if value is None:
            continue
        if key not in data:
            raise ValueError(f"--{flag.replace('_', '-')} is an option for photos; the config's data ({cfg.data.class_path}) has no {key}")
        data[key] = value
    if need_photos and photos and not data.photos:
        raise ValueError(f"{NO_PHOTOS}, or --config configs/protect.yaml for aligned faces")
    cfg.model.output_dir = data.output_dir
    return cfg


def _is_photos(class_path: str) -> bool:
    import importlib

    module, _, name = class_path.rpartition(".")
    return issubclass(getattr(importlib.import_module(module), name), PhotoDataModule)


@dataclass
class Protect:
    """A protect run, built and not yet run."""

    model: ProtectionModule
    datamodule: LightningDataModule
    trainer: Trainer


def build(parser, cfg: Namespace) -> Protect:
    if cfg.seed_everything is not False:
        cfg.seed_everything = seed_everything(None if cfg.seed_everything is True else cfg.seed_everything, workers=True)
    init = parser.instantiate(cfg)
    trainer = {**init.trainer}
    callbacks = trainer.get("callbacks") or []
    trainer["callbacks"] = [*(callbacks if isinstance(callbacks, list) else [callbacks]), RunConfigSaver(parser, cfg, overwrite=True)]
    return Protect(init.model, init.data, Trainer(**trainer))


def build_protect(argv: list[str]) -> Protect:
    """``tipim protect ARGV``, built but not run (tests, benchmarks)."""
    parser = protect_parser()
    return build(parser, resolve(parser, parser.parse_args(argv), lambda: parser.parse_args(argv)))


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


def run(protect: Protect) -> int:
    """Protect what ``protect`` names; print one summary line. 0: all protected, 1: some failed."""
    from tipim.files import RunLock, remove_partials

    model, data, trainer = protect.model, protect.datamodule, protect.trainer
    lock = None
    try:
        if _lead_rank():  # one run per folder; what a killed run left half-written goes first
            lock = RunLock(model.output_dir).acquire()
            remove_partials(model.output_dir)
        trainer.predict(model, datamodule=data, return_predictions=False)
    finally:
        if lock is not None:
            lock.release()
    if not trainer.is_global_zero:
        return 0
    line, failed = data.summary()
    print(line, flush=True)
    return 1 if failed else 0


__all__ = ["Protect", "build", "build_protect", "presets", "protect_parser", "resolve", "run"]
