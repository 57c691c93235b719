"""Trained adaptive attackers as recognisers the field benchmark can score with."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


class Purified(nn.Module):
    """A recogniser that first runs the learned purifier on every crop (probe and gallery alike)."""

    def __init__(self, purifier: nn.Module, recogniser: nn.Module):
        super().__init__()
        self.purifier, self.recogniser = purifier.eval(), recogniser

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.recogniser(self.purifier(x))


def _state(path: str | Path) -> tuple[dict, dict, str]:
    """A Lightning checkpoint's weights and hyperparameters, read with ``weights_only=True`` (no
    pickled code runs), and a short hash of the file that names what it built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attacker checkpoint {path} does not exist; train one with: python -m tipim.adaptive fit --config configs/adaptive/<name>.yaml")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], dict(ckpt.get("hyper_parameters", {})), hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def load_attackers(label: str, path: str | Path, recognisers: list[str]) -> dict[str, nn.Module]:
    """``label``'s checkpoint as named recognisers: a purifier in front of each of ``recognisers``
    (``<label>-<hash>.<model>``), or the adapted recogniser itself (``<label>-<hash>``)."""
    from tipim.models import ZooEmbedder

    state, hp, digest = _state(path)
    name = f"{label}-{digest}"
    if any(k.startswith("net.") for k in state):
        from tipim.adaptive.purifier import PurifierNet

        net = PurifierNet(hp.get("width", 24))
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        return {f"{name}.{m}": Purified(net, ZooEmbedder(m)) for m in recognisers}
    if any(k.startswith("model.") for k in state):
        from tipim.adaptive.adapted import AdaptedRecogniser

        teacher = hp.get("teacher")
        head = state.get("model.head.weight")
        model = AdaptedRecogniser(hp["student"], head.shape[0] if head is not None else None)
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        return {name: model.eval()}
    raise ValueError(f"{path}: neither a purifier (net.*) nor an adapted recogniser (model.*) checkpoint")


class TrainedAttacker(nn.Module):
    """A trained adaptive attacker as a surrogate (``--model.surrogates``), so masks can be
    optimised through it: the defender trains the same attacker that an open-source tool invites.

    Args:
        checkpoint: a ``python -m tipim.adaptive fit`` checkpoint.
        recogniser: the zoo model behind a purifier (an adapted recogniser is its own).
    """

    def __init__(self, checkpoint: str, recogniser: str = "arcface-mbf"):
        super().__init__()
        ((self.name, self.model),) = load_attackers("attacker", checkpoint, [recogniser]).items()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen, like every surrogate
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def dim(self) -> int:
        with torch.no_grad():
            return int(self(torch.zeros(1, 3, 112, 112)).shape[1])
