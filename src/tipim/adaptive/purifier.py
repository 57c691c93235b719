"""A learned purifier: a small U-Net that maps a protected face crop back to its clean version.

It is trained on pixels (L1) and, through a frozen recogniser (``guide``), on what identifies the
face (1 - cosine of the embeddings): PuFace's recipe, at a size a CPU trains in minutes. Clean
crops are trained to pass through unchanged, so purifying everything (probe and gallery) costs the
attacker nothing on unprotected faces.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU(),
    )


class PurifierNet(nn.Module):
    """Three-scale U-Net (112, 56, 28) predicting a residual; [0, 1] crops in and out."""

    def __init__(self, width: int = 24):
        super().__init__()
        c = width
        self.enc1, self.enc2, self.enc3 = _block(3, c), _block(c, 2 * c, 2), _block(2 * c, 4 * c, 2)
        self.dec2, self.dec1 = _block(6 * c, 2 * c), _block(3 * c, c)
        self.out = nn.Conv2d(c, 3, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity: training only has to learn the mask
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"PurifierNet takes (B, 3, H, W) crops with H and W divisible by 4, got {tuple(x.shape)}")
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False), e1], 1))
        return (x + self.out(d1)).clamp(0, 1)


class PurifierModule(L.LightningModule):
    """Trains ``PurifierNet``: L1 to the clean crop + ``identity_weight`` x (1 - cos) through the
    frozen ``guide`` recogniser, on protected crops and (so it leaves them alone) clean ones."""

    def __init__(self, guide: str = "arcface-mbf", width: int = 24, identity_weight: float = 1.0, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        from tipim.models import ZooEmbedder

        self.net = PurifierNet(width)
        self.guide = ZooEmbedder(guide) if identity_weight > 0 else None

    def _loss(self, batch: dict, stage: str) -> torch.Tensor:
        x = torch.cat([batch["protected"], batch["clean"]])
        y = torch.cat([batch["clean"], batch["clean"]])
        out = self.net(x)
        loss = F.l1_loss(out, y)
        logs = {f"{stage}/l1": loss.detach()}
        if self.guide is not None:
            with torch.no_grad():
                target = F.normalize(self.guide(batch["clean"]), dim=1)
            emb = F.normalize(self.guide(out), dim=1)
            n = len(batch["clean"])
            cos = (emb * target.repeat(2, 1)).sum(1)
            loss = loss + self.hparams.identity_weight * (1 - cos).mean()
            logs[f"{stage}/cos_protected"] = cos[:n].mean().detach()  # purified protected face vs its clean self
            logs[f"{stage}/cos_clean"] = cos[n:].mean().detach()
            if stage == "val":
                with torch.no_grad():
                    before = (F.normalize(self.guide(batch["protected"]), dim=1) * target).sum(1)
                logs["val/cos_before"] = before.mean()  # the same, unpurified: what the purifier has to beat
        logs[f"{stage}/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=stage == "val", batch_size=len(batch["clean"]))
        return loss

    def training_step(self, batch, _):
        return self._loss(batch, "train")

    def validation_step(self, batch, _):
        self._loss(batch, "val")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.trainer.max_epochs))}
