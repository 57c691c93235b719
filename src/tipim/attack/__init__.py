"""TIP-IM and its baselines, composed from small parts (objective, selector, step, transform)."""

from tipim.attack.balance import MemberBalance, member_weights
from tipim.attack.dropout import FeatureDropout
from tipim.attack.engine import AttackResult, IdentityMaskAttack
from tipim.attack.objectives import (
    Naturalness,
    Objective,
    gain,
    gaussian_kernel,
    identity_distance,
    judge,
    mmd,
    relative_identity_loss,
    surrogate_success,
)
from tipim.attack.randomness import PerImageRandom
from tipim.attack.selection import FixedTarget, GreedyInsertion, GreedyStep, NearestTarget, SurrogatePass, TargetSelector
from tipim.attack.steps import MomentumStep, project, quantise_within, smooth_gradient
from tipim.attack.transforms import PostingTransform, RandomAffine, ResizePad

__all__ = [
    "AttackResult",
    "FeatureDropout",
    "FixedTarget",
    "GreedyInsertion",
    "GreedyStep",
    "IdentityMaskAttack",
    "MemberBalance",
    "MomentumStep",
    "Naturalness",
    "NearestTarget",
    "Objective",
    "PerImageRandom",
    "PostingTransform",
    "RandomAffine",
    "ResizePad",
    "SurrogatePass",
    "TargetSelector",
    "gain",
    "gaussian_kernel",
    "identity_distance",
    "judge",
    "member_weights",
    "mmd",
    "project",
    "quantise_within",
    "relative_identity_loss",
    "smooth_gradient",
    "surrogate_success",
]
