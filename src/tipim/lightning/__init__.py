"""The Lightning shape of the tool: a DataModule of faces, a module that protects them in
``predict``, and callbacks for the side effects (writing files, logging statistics)."""

from tipim.lightning.callbacks import AttackStatsLogger, ProtectedImageWriter
from tipim.lightning.data import FaceFolder, ProtectDataModule, load_targets
from tipim.lightning.module import ProtectionModule

__all__ = ["AttackStatsLogger", "FaceFolder", "ProtectDataModule", "ProtectedImageWriter", "ProtectionModule", "load_targets"]
