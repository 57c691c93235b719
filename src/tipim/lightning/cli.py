"""``tipim protect``: one LightningCLI over one config tree (``configs/``, packaged as ``tipim/configs``).

What sets an option, lowest first: ``configs/photos.yaml``; the overlays that ``--preset``,
``--goal`` and ``--robust`` choose (``configs/preset/<name>.yaml``, ``configs/goal/<name>.yaml``,
``configs/robust/{on,off}.yaml``), read as the parser's default config files; then ``--config``
files and ``--model.*`` / ``--data.*`` / ``--trainer.*`` options, in the order given. Photos given
as arguments are protected in place of the ``data`` of a config. The command line is parsed once;
the resolved config is written to ``<output_dir>/config.yaml``.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path
from typing import Union

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from tipim.lightning.data import RunData
from tipim.lightning.module import ProtectionModule
from tipim.lightning.photo_data import NO_PHOTOS, PhotoDataModule

def _config_tree() -> Path:
    """The repository's configs/, shipped in the package as tipim/configs (a symbolic link in a
    clone; a checkout without links, as on Windows, has a small file there: then the clone's own)."""
    here = Path(__file__).resolve().parents[1] / "configs"
    return here if here.is_dir() else Path(__file__).resolve().parents[3] / "configs"


CONFIGS = _config_tree()
TRAINER_DEFAULTS = {
    "inference_mode": False,  # the attack needs gradients inside predict
    "use_distributed_sampler": False,  # RunData deals whole batches to ranks
    "logger": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,  # the module's own bar counts faces or photos, not batches
}
# the shortcuts for people protecting photos, and the PhotoDataModule argument each sets
PHOTO_FLAGS = {"out": "output_dir", "targets": "targets", "format": "output_format", "quality": "quality",
               "keep_metadata": "keep_metadata", "faces": "multi", "detect_size": "detect_size", "check": "check"}
OVERLAYS = ("preset", "goal", "robust")  # command-line choices of default config files


def presets() -> dict[str, Path]:
    """The presets: ``configs/preset/<name>.yaml``, model overlays whose first line says what they run."""
    return {p.stem: p for p in sorted((CONFIGS / "preset").glob("*.yaml"))}


def goals() -> dict[str, Path]:
    return {p.stem: p for p in sorted((CONFIGS / "goal").glob("*.yaml"))}


def preset_summary(path: Path) -> str:
    return path.read_text().splitlines()[0].lstrip("# ").strip()


def overlay_files(preset: str, goal: str, robust: bool) -> list[Path]:
    """The default config files that a photo run's ``--preset``, ``--goal`` and ``--robust`` stand for."""
    files = [CONFIGS / "photos.yaml", presets()[preset], goals()[goal], CONFIGS / "robust" / ("on.yaml" if robust else "off.yaml")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"the package's config tree lacks {', '.join(missing)}; reinstall tipim (pip install .)")
    return files


def method_name(preset: str, goal: str, robust: bool) -> str:
    """The name a photo run's manifest gives its method: ``tipim-balanced``, ``tipim-fast-plain-target``."""
    return f"tipim-{preset}" + ("" if robust else "-plain") + ("-target" if goal == "target" else "")


def overlay_choice(parser, args: list[str]) -> tuple[str, str, bool]:
    """What the command line chooses for ``--preset``, ``--goal`` and ``--robust`` (the parser's
    defaults where it does not): read before the parse, as the parse starts from the overlays."""
    defaults = tuple(parser.get_default(k) for k in OVERLAYS)
    scan = _Scan(add_help=False, allow_abbrev=False)
    scan.add_argument("--preset", default=defaults[0])
    scan.add_argument("--goal", default=defaults[1])
    scan.add_argument("--robust", action=argparse.BooleanOptionalAction, default=defaults[2])
    try:
        known, _ = scan.parse_known_args(args)
    except ValueError:  # e.g. --preset without a value: the parse itself says what is wrong
        return defaults
    return known.preset, known.goal, known.robust


class _Scan(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def packaged_config(path: str) -> str:
    """``configs/method/tipim.yaml`` (or ``method/tipim.yaml``) where there is no such file here:
    the file of the tree shipped in the package, so the README's commands work after ``pip install``."""
    try:
        if Path(path).exists() or Path(path).is_absolute() or ".." in Path(path).parts or "\n" in path:
            return path  # the user's own file, or a config given inline
        shipped = CONFIGS / Path(path).as_posix().removeprefix("configs/")
        return str(shipped) if shipped.is_file() else path
    except OSError:  # a name too long for a path: an inline config
        return path


def with_packaged_configs(args: list[str]) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("-c", "--config") and i + 1 < len(out):
            out[i + 1] = packaged_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + packaged_config(arg.removeprefix("--config="))
    return out


def as_flag(key: str, value) -> str:
    """One of the three choices as the command line gives it: ``--preset fast``, ``--no-robust``."""
    return f"--{key} {value}" if key != "robust" else ("--robust" if value else "--no-robust")


def dump_run_config(parser, config: Namespace, **kwargs) -> str:
    """A run's config as YAML, what ``--preset``, ``--goal`` and ``--robust`` chose named in its
    first line rather than as keys: their settings are in the model block, so ``--config`` on it
    rebuilds the run whatever the command line chooses."""
    config = config.clone()
    chosen = " ".join(as_flag(k, config[k]) for k in OVERLAYS)
    for key in OVERLAYS:
        del config[key]
    # a config of aligned faces sets its own model block: the three do not reach it
    header = f"# tipim protect {chosen} (their settings are below)\n" if _is_photos(config.data.class_path) else ""
    return header + parser.dump(config, skip_unset=False, **kwargs)


class RunConfigSaver(SaveConfigCallback):
    """Write the resolved config beside the run's outputs and give it to every logger (W&B
    shows it as the run config), on rank 0. What ``--preset``, ``--goal`` and ``--robust`` chose
    is in its model block; the header names them, and rebuilding from it needs neither."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            out = Path(self.config.data.init_args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(dump_run_config(self.parser, self.config))
            flat = {k: v for k, v in self.config.clone(with_meta=False).as_flat().__dict__.items() if not k.startswith("trainer.callbacks")}
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


class ProtectCLI(LightningCLI):
    """``tipim protect ARGS``: parsed once over the config tree, built, not run (``run``)."""

    def __init__(self, args: list[str]):
        super().__init__(
            ProtectionModule, RunData, subclass_mode_data=True, trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0,
            save_config_callback=RunConfigSaver, save_config_kwargs={"overwrite": True}, args=list(args), run=False,
            auto_configure_optimizers=False, load_from_checkpoint_support=False,
        )

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        p = LightningArgumentParser(
            prog="tipim protect",
            allow_abbrev=False,  # --pre would mean --preset to the parse but not to overlay_choice
            usage="tipim protect PHOTO... [options]   (tipim protect --help: the options for photos; --help-all: every option)",
            description="Protect photos: every face in each photo gets an identity mask (TIP-IM); the rest of the photo is "
            "untouched. Aligned face sets and protocols take a --config instead of photos.",
            epilog=(
                f"presets ({CONFIGS / 'preset'}; seconds per one-face photo on a 2-core CPU in benchmarks/results/photo_presets.md):\n"
                + "".join(f"  {name:9s} {preset_summary(path)}\n" for name, path in presets().items())
                + "\nexamples:\n"
                "  tipim protect me.jpg                        -> protected/images/me.png\n"
                "  tipim protect holiday/ --out safe/ --preset fast --format jpeg --quality 90\n"
                "  tipim protect me.jpg --model.steps 30 --trainer.accelerator gpu\n"
                "  tipim protect --config configs/protect.yaml --config configs/method/tipim.yaml --data.faces DIR\n\n"
                "--preset, --goal and --robust choose the defaults (configs/preset, goal and robust); --config files and\n"
                "--model/--data/--trainer options override them, in the order given; the photos and the flags above are\n"
                "applied last. Every option: tipim protect --help-all; the data options: tipim protect --data.help\n"
                "PhotoDataModule (photos) or --data.help ProtectDataModule (aligned faces, what configs/protect.yaml chooses)"
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
        g.add_argument("--goal", choices=sorted(goals()), default="hide",
                       help="hide (default): recognisers should not match the face to the person (measured: 92 percent of small "
                       "faces not recognised by unseen models, against 80 with target); target: TIP-IM's identity mask as the "
                       "paper weighs it, the face is matched to one of the targets by the surrogate (and less often to the person)")
        g.add_argument("--format", choices=["png", "jpeg", "webp"], default=None, help="output format (png: lossless, default)")
        g.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality (default 95; WebP 100 = lossless)")
        g.add_argument("--keep-metadata", action="store_true", default=None, help="keep the source EXIF, location included (removed by default)")
        g.add_argument("--targets", default=None, help="folder of aligned target faces (default: the packaged team photo's 10 faces)")
        g.add_argument("--faces", choices=["all", "largest", "center"], default=None, help="which faces of a photo to protect (default: all)")
        g.add_argument("--detect-size", type=int, default=None, metavar="PX",
                       help="faces are searched in a copy of each photo downscaled to this longer side (default 1600: a 12 MP "
                       "photo then finds faces from ~50 px wide); 0 = full resolution, slower but finds smaller faces")
        g.add_argument("--check", default=None, help="after writing, models that did not make the mask say whether they still "
                       "recognise each face: auto (every fetched zoo model not used, default), none, or names (a,b)")
        p.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML config (configs/protect.yaml for aligned faces; "
                       "configs/method/*.yaml for the paper's methods); several are applied in order")
        return p

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--seed_everything", type=Union[bool, int], default=0, help="seed of the run (True: a random one)")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        """One parse, from the overlays the command line chooses; then the photos and their flags.
        ``--print_config`` shows the result of both, and stops."""
        if not args:  # a person who typed the command alone: what to give it
            print(short_help(parser), end="")
            raise SystemExit(2)
        show = [a for a in args if a.startswith("--print_config")]
        args = with_packaged_configs([a for a in args if a not in show])
        chosen = overlay_choice(parser, args)
        if chosen[0] in presets() and chosen[1] in goals():  # else the parse names the valid choices
            parser.default_config_files = [glob.escape(str(f)) for f in overlay_files(*chosen)]  # read as glob patterns
            parser.set_defaults({"model.method": method_name(*chosen)})
        self.config = parser.parse_args(args)  # LightningCLI's own parse_arguments only adds a warning about sys.argv
        picked = tuple(self.config[k] for k in OVERLAYS)
        if picked != chosen:
            key, value, line = next((k, v, c) for k, v, c in zip(OVERLAYS, picked, chosen) if v != c)
            raise ValueError(f"a config file sets {key}: {value}, but the command line chose {line} and the parse starts from "
                             f"what the command line chooses: give {as_flag(key, value)} on the command line, or delete that line of the config "
                             "(a run's config.yaml holds what these chose in its model block)")
        self.config = resolve(self.config, need_photos=not show)
        if show:
            print(dump_run_config(parser, self.config, skip_default="skip_default" in show[0]), end="")
            raise SystemExit(0)


def resolve(cfg: Namespace, need_photos: bool = True) -> Namespace:
    """The photo arguments and flags, which override the data's arguments."""
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
    return cfg


def _is_photos(class_path: str) -> bool:
    import importlib

    module, _, name = class_path.rpartition(".")
    return issubclass(getattr(importlib.import_module(module), name), PhotoDataModule)


def build_protect(argv: list[str]) -> ProtectCLI:
    """``tipim protect ARGV``, built but not run (tests, benchmarks)."""
    return ProtectCLI(argv)


def _quiet() -> None:
    """A person sees our progress bar, messages and summary: not Lightning's tips, device
    inventory or third-party deprecation warnings that ask nothing of them."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*custom batch sampler.*", ".*treespec.*",
                    ".*does not have many workers.*", ".*litlogger.*", ".*litmodels.*"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.utils._pytree")


def _lead_rank() -> bool:
    """The process that owns the run folder: rank 0 of torchrun/SLURM, or the process a user
    started (Lightning's DDP launcher gives the processes it starts a LOCAL_RANK)."""
    import os

    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def run(protect: ProtectCLI) -> int:
    """Protect what ``protect`` names; print one summary line. 0: all protected, 1: some failed."""
    from tipim.files import RunLock, remove_partials

    model, data, trainer = protect.model, protect.datamodule, protect.trainer
    lock = None
    try:
        if _lead_rank():  # one run per folder; what a killed run left half-written goes first
            lock = RunLock(data.output_dir).acquire()
            remove_partials(data.output_dir)
        trainer.predict(model, datamodule=data, return_predictions=False)
    finally:
        if lock is not None:
            lock.release()
    if not trainer.is_global_zero:
        return 0
    line, failed = data.summary()
    print(line, flush=True)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    """``tipim protect ARGV``: a bad config or input gets one line that says what and how to fix (exit 2)."""
    from tipim.files import OutputBusyError

    _quiet()
    try:
        return run(ProtectCLI(argv))
    except (FileNotFoundError, KeyError, ValueError, OutputBusyError) as e:
        import sys

        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"tipim protect: error: {msg}", file=sys.stderr)
        return 2


__all__ = ["ProtectCLI", "build_protect", "main", "presets", "run"]
