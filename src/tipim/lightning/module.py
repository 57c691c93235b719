"""TIP-IM as a LightningModule.

The masks are the optimised state, but not as DDP-trained parameters: DDP would average each
face's gradient with other ranks' faces (see docs/design.md). The attack runs inside
``predict_step`` (no DDP wrapper, no gradient all-reduce, each face on exactly one rank), with
gradients re-enabled locally; ``Trainer(inference_mode=False)`` is required.
"""

from __future__ import annotations

import hashlib
import time

import lightning as L
import torch
from torch import nn

from tipim.attack import GreedyInsertion, IdentityMaskAttack, MemberBalance, MomentumStep, Naturalness, PerImageRandom, TargetSelector, judge, quantise_within
from tipim.models import Ensemble, load_embedder


def face_seed(seed: int, face_id: str) -> int:
    """A face's seed from the run seed and its id: the face gets the same randomness in any
    batch, on any rank and in any re-run."""
    h = hashlib.sha256(f"{seed}|{face_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class ProtectionModule(L.LightningModule):
    """Protect aligned faces against face recognition with identity masks.

    Args:
        surrogates: white-box models: zoo names (``tipim models list``) or embedders given as
            ``class_path`` entries; several make a weighted ensemble.
        surrogate_weights: ensemble weights (equal by default).
        balance: how an ensemble's members share each step (``tipim.attack.MemberBalance``:
            per-member gradient normalisation, the least-fooled member favoured); None = the
            plain summed objective.
        method: the name recorded in the manifest (configs/method/*.yaml set the parts below).
        eps_levels: the L-inf bound in 8-bit levels (12 = 12/255), the paper's budget; the promise
            every written image keeps.
        eps_l2: with ``norm: l2``, the L2 radius in [0, 1] pixel units (and then no 8-bit bound).
        steps: iterations T.
        step_size: ``paper`` (1.5/255), ``official`` (1.5 * eps / T) or a number in [0, 1] units.
        momentum: MI-FGSM decay mu (0 = PGD).
        grad_smoothing: odd Gaussian kernel size that smooths each gradient before the momentum
            step (TI-FGSM, ``tipim.attack.smooth_gradient``), in the mask's pixels; 0 = off.
        norm: ``linf`` or ``l2``.
        selector: how each image picks its target (greedy insertion, fixed, nearest).
        gamma: weight of the MMD naturalness term (0 = off).
        away: weight of the "away from the original" term ``D(x_p, x_r)`` (1 = the paper).
        mmd_views: > 0: the single-image MMD mode with this many augmented views.
        mmd_group: faces per MMD term: the term is computed within fixed groups of this many faces
            (the paper: the whole batch), so the batch size changes no result; the batch size
            must be a multiple of it.
        transform: input diversity before the surrogate (None = off).
        feature_dropout: share of the surrogate's convolution outputs dropped in each gradient
            pass (DFANet's self-ensemble, ``tipim.attack.FeatureDropout``); 0 = off.
        metric: identity distance, ``l2`` or ``cosine``.
        random_start: start at a random point of the eps-ball (PGD).
        grad_mode: ``loop`` or ``batched`` per-target gradients (same result, speed differs).
        compile: ``torch.compile`` the surrogate (``true``: inductor, or a backend's name): for GPUs,
            where it is 2.5-2.7x on the engine; slower on a small CPU (``IdentityMaskAttack``).
        seed: run seed; each batch's randomness derives from it and the batch's image ids.
        log_images: faces to show once in an image-capable logger (W&B); 0 sends no face anywhere.
    """

    def __init__(
        self,
        surrogates: list[str | nn.Module] = ["arcface-mbf"],  # noqa: B006 (jsonargparse needs a literal default)
        surrogate_weights: list[float] | None = None,
        balance: MemberBalance | None = None,
        method: str = "tipim",
        eps_levels: float = 12.0,
        eps_l2: float | None = None,
        steps: int = 50,
        step_size: str | float = "paper",
        momentum: float = 1.0,
        grad_smoothing: int = 0,
        norm: str = "linf",
        selector: TargetSelector | None = None,
        gamma: float = 0.0,
        away: float = 1.0,
        mmd_views: int = 0,
        mmd_group: int = 8,
        transform: nn.Module | None = None,
        feature_dropout: float = 0.0,
        metric: str = "l2",
        random_start: bool = False,
        grad_mode: str = "loop",
        compile: bool | str = False,
        seed: int = 0,
        log_images: int = 0,
    ):
        super().__init__()
        members = [load_embedder(s) for s in surrogates]
        surrogate = members[0] if len(members) == 1 and surrogate_weights is None else Ensemble(members, surrogate_weights)
        self.surrogate_names = [getattr(m, "name", type(m).__name__) for m in members]
        if norm not in ("linf", "l2"):
            raise ValueError(f"model.norm must be linf or l2, got {norm!r}")
        if norm == "l2" and eps_l2 is None:
            raise ValueError("model.norm l2 needs model.eps_l2, the L2 radius in [0, 1] pixel units (e.g. --model.eps_l2 0.5)")
        if norm == "linf" and eps_l2 is not None:
            raise ValueError("model.eps_l2 is the radius for model.norm l2; the L-inf bound is model.eps_levels (8-bit levels)")
        eps = eps_levels / 255.0 if norm == "linf" else eps_l2  # in [0, 1] pixel units, as the attack steps
        self.eps_levels = eps_levels if norm == "linf" else None  # the bound the written files keep
        self.attack = IdentityMaskAttack(
            surrogate,
            MomentumStep(eps, steps, step_size, momentum, norm, grad_smoothing),
            selector or GreedyInsertion(),
            Naturalness(gamma, mmd_views, group=mmd_group) if gamma > 0 else None,
            transform,
            metric,
            random_start,
            grad_mode,
            balance=balance,
            away=away,
            feature_dropout=feature_dropout,
            compile=compile,
        )
        self.method, self.seed, self.steps = method, seed, steps
        self.log_images = log_images
        self.on_faces_attacked = None  # (done, total) after each bucket of a photo batch: a progress bar's hook
        self.target_names: list[str] = []
        self.register_buffer("target_embeddings", torch.empty(0), persistent=False)

    @property
    def mmd_group(self) -> int:
        """Faces per MMD term (1 when the term is off: then nothing couples faces)."""
        return self.attack.objective.naturalness.group if self.attack.objective.naturalness is not None else 1

    def configure_callbacks(self):
        from tipim.lightning.callbacks import AttackStatsLogger, StopOnSigterm

        dm = self.trainer.datamodule if self._trainer is not None else None
        writers = dm.output_callbacks() if dm is not None else []  # each run kind's data (RunData) brings its writer
        return [*writers, AttackStatsLogger(self.log_images), StopOnSigterm()]  # last: after the batch is written

    def on_predict_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is None or dm.target_images is None:
            raise RuntimeError("ProtectionModule needs a ProtectDataModule with a target set")
        dm.check_mmd_group(self.mmd_group)
        self.target_names = list(dm.target_names)
        self.target_embeddings = self.attack.embed_targets(dm.target_images.to(self.device, self.dtype))

    @torch.no_grad()
    def judge_crops(self, crops_p: torch.Tensor, crops_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The surrogate's verdict on protected crops against their originals (e.g. re-cropped
        from a written photo): ``(d_r, d_t, nearest target)`` per face, on the CPU."""
        dev = self.target_embeddings.device
        e_p, e_r = self.attack.embed(crops_p.to(dev)), self.attack.embed(crops_r.to(dev))
        return tuple(t.cpu() for t in judge(e_p, e_r, self.target_embeddings, self.attack.metric))

    def predict_step(self, batch, batch_idx: int) -> dict:
        """``batch``: a ``CropBatch`` or ``PhotoBatch`` (``tipim.lightning.batches``); its units
        are attacked in turn and its ``predictions`` are what its writer writes."""
        start, done = time.perf_counter(), []
        for unit in batch.attack_units(self.mmd_group):
            done.append((unit, self._attack(unit.x_r, unit.ids, unit.groups, unit.view)))
            if self.on_faces_attacked is not None:
                self.on_faces_attacked(sum(len(u.index) for u, _ in done), len(batch))
        return batch.predictions(done, self._quantise, self.target_names, time.perf_counter() - start)

    def _attack(self, x_r: torch.Tensor, ids: list[str], groups: torch.Tensor, view: nn.Module | None = None):
        rng = PerImageRandom([face_seed(self.seed, i) for i in ids], x_r.device)
        with torch.enable_grad():
            return self.attack(x_r, self.target_embeddings, view=view, rng=rng, groups=groups)

    def _quantise(self, x_p: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        return quantise_within(x_p, x_r, self.attack.step.eps if self.eps_levels else 1.0)


__all__ = ["ProtectionModule", "face_seed"]
