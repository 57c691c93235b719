"""A recogniser adapted to tipim's masks: a zoo model fine-tuned so that protected faces embed near
their clean selves, as a frozen ``teacher`` embeds the clean face.

With the teacher the same model as the student this is FaceCure's robust training (the attacker
re-trains their own recogniser on cloaked photos); with another model it is FaceLinkGen's
distilled student (a network of a different family learns the teacher's embedding space from
protected and clean faces alike, through a linear head). Clean faces keep their teacher embedding,
so the adapted model still recognises unprotected people.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class AdaptedRecogniser(nn.Module):
    """The student zoo model (trainable), optionally followed by a linear head into the teacher's space."""

    def __init__(self, student: str, head_dim: int | None = None):
        super().__init__()
        from tipim.models import ZooEmbedder

        self.student = ZooEmbedder(student)
        for p in self.student.net.parameters():
            p.requires_grad_(True)  # batch norm stays in eval mode (Embedder.train): a few hundred faces cannot re-estimate it
        self.head = nn.Linear(self.student.dim, head_dim) if head_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.student(x))


class AdaptedModule(L.LightningModule):
    """Fine-tunes ``student`` (all weights, learning rate ``lr``; the head at 10x) to map protected
    and clean crops to the frozen ``teacher``'s embedding of the clean crop (1 - cosine)."""

    def __init__(self, student: str = "edgeface-s", teacher: str | None = None, lr: float = 1e-4):
        super().__init__()
        self.save_hyperparameters()
        from tipim.models import ZooEmbedder

        self.teacher = ZooEmbedder(teacher or student)
        self.model = AdaptedRecogniser(student, self.teacher.dim if teacher and teacher != student else None)

    def _loss(self, batch: dict, stage: str) -> torch.Tensor:
        with torch.no_grad():
            target = F.normalize(self.teacher(batch["clean"]), dim=1)
        n = len(target)
        emb = F.normalize(self.model(torch.cat([batch["protected"], batch["clean"]])), dim=1)
        cos = (emb * target.repeat(2, 1)).sum(1)
        loss = (1 - cos).mean()
        logs = {f"{stage}/loss": loss.detach(), f"{stage}/cos_protected": cos[:n].mean().detach(), f"{stage}/cos_clean": cos[n:].mean().detach()}
        if stage == "val" and isinstance(self.model.head, nn.Identity):
            with torch.no_grad():
                logs["val/cos_before"] = (F.normalize(self.teacher(batch["protected"]), dim=1) * target).sum(1).mean()
        self.log_dict(logs, prog_bar=stage == "val", batch_size=n)
        return loss

    def on_fit_start(self) -> None:
        """A new student's head starts as the ridge regression from its embeddings of clean and
        protected crops to the teacher's of the clean crop (closed form, on the training pairs):
        a few hundred faces cannot teach a random head a 512-d map by gradient steps alone. A
        resumed run keeps its trained head."""
        head = self.model.head
        if not isinstance(head, nn.Linear) or self.trainer.global_step > 0:
            return
        data = self.trainer.datamodule.train_set
        with torch.no_grad():
            xs, ys = [], []
            for i in range(0, len(data), 32):
                items = [data[j] for j in range(i, min(len(data), i + 32))]
                clean = torch.stack([d["clean"] for d in items]).to(self.device)
                protected = torch.stack([d["protected"] for d in items]).to(self.device)
                target = F.normalize(self.teacher(clean), dim=1)
                xs += [self.model.student(clean), self.model.student(protected)]
                ys += [target, target]
            x, y = torch.cat(xs), torch.cat(ys)
            mx, my = x.mean(0), y.mean(0)
            xc = x - mx
            gram = xc.T @ xc
            ridge = 1e-2 * gram.trace() / len(gram)  # relative to the embeddings' own scale
            w = torch.linalg.solve(gram + ridge * torch.eye(len(gram), device=x.device), xc.T @ (y - my))
            head.weight.copy_(w.T)
            head.bias.copy_(my - mx @ w)

    def training_step(self, batch, _):
        return self._loss(batch, "train")

    def validation_step(self, batch, _):
        self._loss(batch, "val")

    def configure_optimizers(self):
        head = list(self.model.head.parameters())
        groups = [{"params": [p for p in self.model.student.parameters() if p.requires_grad], "lr": self.hparams.lr}]
        if head:
            groups.append({"params": head, "lr": self.hparams.lr * 10})
        opt = torch.optim.AdamW(groups)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.trainer.max_epochs))}
