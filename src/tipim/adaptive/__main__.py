"""Train an adaptive attacker: ``python -m tipim.adaptive fit --config configs/adaptive/<name>.yaml``.

LightningCLI: the config names the model (``class_path``), the pairs and the trainer; the run is
seeded (``seed_everything``), logged (CSV under ``trainer.default_root_dir``; W&B when the config
asks), and resumes from its last checkpoint with ``--ckpt_path last``.
"""

from __future__ import annotations

import warnings

import lightning as L
from lightning.pytorch.cli import LightningCLI

from tipim.adaptive.data import PairData


def main(args=None) -> None:
    # the recognisers stay in eval mode on purpose (frozen batch norm, Embedder.train)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    LightningCLI(L.LightningModule, PairData, subclass_mode_model=True, seed_everything_default=0,
                 save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
