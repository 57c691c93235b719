"""The attack a method config defines, for the benchmarks that drive the engine directly: parsed
from the same YAML as a ``tipim protect`` run (``configs/protect.yaml`` + ``configs/method/<name>.yaml``),
so a benchmark cannot drift from what the method is."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the run is built around a 1x1 convolution instead of a zoo model: no weights are loaded for a
# surrogate that is then replaced (seconds per call, on a lent device's clock too)
STAND_IN = '[{"class_path": "torch.nn.Conv2d", "init_args": {"in_channels": 3, "out_channels": 1, "kernel_size": 1}}]'


def method_attack(surrogate, method: str = "tipim", *options: str, **engine):
    """``IdentityMaskAttack`` on ``surrogate`` (any embedder, e.g. a compiled one) with the parts
    that ``configs/method/<method>.yaml`` defines; ``options`` override them like on the command
    line (``"--model.steps", "20"``); ``engine``: engine-only arguments (``channels_last``). An
    ensemble's member balancing (``--model.balance``) is not carried over: no method config sets it."""
    from tipim.attack import IdentityMaskAttack
    from tipim.lightning.cli import _quiet, build_protect

    _quiet()
    a = build_protect(["--config", str(CONFIGS / "protect.yaml"), "--config", str(CONFIGS / "method" / f"{method}.yaml"),
                       "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--model.surrogates", STAND_IN, *options]).model.attack
    o = a.objective
    return IdentityMaskAttack(surrogate, a.step, a.selector, o.naturalness, a.transform, a.metric, a.random_start, o.grad_mode,
                              away=o.away, feature_dropout=a.dropout.p if a.dropout is not None else 0.0, **engine)
