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


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
    try:
        cli = _build(argv)
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except (KeyError, FileNotFoundError, ValueError) as e:  # bad config or input: say what and how to fix
        print(f"tipim protect: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    if cli.trainer.is_global_zero:
        line, failed = summarise(cli.model.output_dir)
        print(line, flush=True)
        return 1 if failed else 0
    return 0


def _build(argv: list[str] | None) -> ProtectCLI:
    return ProtectCLI(
        ProtectionModule,
        ProtectDataModule,
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
