"""The attack's parts, each against a direct computation, on a tiny random network."""

import threading

import pytest
import torch
import torch.nn.functional as F

from tipim.attack import (
    FeatureDropout,
    FixedTarget,
    GreedyInsertion,
    IdentityMaskAttack,
    MomentumStep,
    Naturalness,
    NearestTarget,
    PerImageRandom,
    PostingTransform,
    RandomAffine,
    ResizePad,
    gain,
    identity_distance,
    judge,
    mmd,
    project,
    quantise_within,
    relative_identity_loss,
    smooth_gradient,
    surrogate_success,
)

EPS = 12 / 255


class TinyFR(torch.nn.Module):
    def __init__(self, dim=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16 * 16, dim)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5

    def forward(self, x):
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(x * 2 - 1))))
        return self.fc(F.adaptive_avg_pool2d(h, 4).flatten(1))


def smooth_images(n, seed):
    """Random faces stand-ins with large-scale structure, so embeddings differ."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    return (F.interpolate(low, size=(112, 112), mode="bilinear", align_corners=False) * 255).round() / 255


def same_image(a, b):
    """Equal up to sign flips of a handful of float-noise gradient entries."""
    return (a - b).abs().gt(1e-5).float().mean() < 1e-3


@pytest.fixture
def setup():
    torch.manual_seed(0)
    net = TinyFR().eval()
    x_r = smooth_images(4, 1)  # 8-bit
    targets = smooth_images(5, 2)
    return net, x_r, targets


def test_mmd_equals_a_direct_double_sum():
    torch.manual_seed(1)
    x, y = torch.randn(4, 7), torch.randn(4, 7) + 0.5
    z = torch.cat([x, y])
    d2 = torch.tensor([[float(((a - b) ** 2).sum()) for b in z] for a in z])
    bw = d2.sum() / (8 * 8 - 8) / 2 ** (5 // 2)
    k = lambda i, j: sum(torch.exp(-d2[i, j] / (bw * 2**q)) for q in range(5))  # noqa: E731
    direct = sum(k(i, j) + k(4 + i, 4 + j) - k(i, 4 + j) - k(4 + i, j) for i in range(4) for j in range(4)) / 16
    assert torch.allclose(mmd(x, y), direct, atol=1e-5)
    assert mmd(x, x).abs() < 1e-6 and mmd(x, y) > 0


@pytest.mark.parametrize("lead, dtype", [((), torch.float32), ((3,), torch.float32), ((2,), torch.float64), ((2,), torch.bfloat16)])
def test_the_kernels_gram_backward_is_autograds_to_the_bit(lead, dtype):
    """The Gram matrix's own backward (the originals' rows left out) gives the gradient that
    autograd gives through ``z @ z.T``, bit for bit: single-image views (8 + 8 rows of a 112 x 112
    face), groups of faces, float64 and half precision (computed in float32)."""
    from tipim.attack.objectives import _Gram, gaussian_kernel

    g = torch.Generator().manual_seed(5)
    x = torch.rand(*lead, 8, 3 * 112 * 112, generator=g).to(dtype)
    y = (x.float() + 0.05 * torch.randn(x.shape, generator=g)).to(dtype)
    up = torch.randn(*lead, 16, 16, generator=g)

    def autograds(x, y):  # the kernel with the Gram matrix left to autograd
        z = torch.cat([x, y], -2)
        z = z.float() if z.dtype == torch.bfloat16 else z
        gram = torch.stack([m @ m.T for m in z.reshape(-1, 16, z.shape[-1])]).view(*z.shape[:-1], 16)
        sq = gram.diagonal(dim1=-2, dim2=-1)
        d2 = (sq[..., :, None] + sq[..., None, :] - 2 * gram).clamp_min(0)
        bandwidth = (d2.detach().sum(dim=(-2, -1), keepdim=True) / (16 * 16 - 16)).clamp_min(1e-12) / 2.0**2
        return sum(torch.exp(-d2 / (bandwidth * 2.0**i)) for i in range(5))

    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want_k, got_k = autograds(a, y), gaussian_kernel(b, y)
    assert torch.equal(got_k, want_k)
    assert torch.equal(torch.autograd.grad(got_k, b, up.to(got_k.dtype))[0], torch.autograd.grad(want_k, a, up.to(want_k.dtype))[0])
    small, other = torch.rand(2, 2, 3, 5, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda v: _Gram.apply(v, other), (small.requires_grad_(True),))  # (the kernel itself holds its bandwidth constant)


def test_naturalness_single_image_views_are_defined_and_differentiable():
    x_r = torch.rand(1, 3, 112, 112)
    x_p = (x_r + 0.03 * torch.randn_like(x_r)).clamp(0, 1).requires_grad_(True)
    term = Naturalness(gamma=2.0, views=4)(x_p, x_r)
    assert term.shape == (1,) and term > 0
    term.sum().backward()
    assert x_p.grad.abs().sum() > 0
    assert Naturalness(gamma=1.0)(x_r.clone(), x_r).abs().max() < 1e-5  # one image, no change -> views mode, ~0


def test_naturalness_is_the_mmd_of_each_faces_group():
    torch.manual_seed(3)
    x_r = torch.rand(7, 3, 8, 8)
    x_p = (x_r + 0.05 * torch.randn_like(x_r)).clamp(0, 1)
    nat = Naturalness(gamma=2.0, group=3)
    got = nat(x_p, x_r)  # groups [0, 1, 2], [3, 4, 5], [6] (a group of one: views)
    for g in ([0, 1, 2], [3, 4, 5]):
        want = 2.0 * mmd(x_p[g].flatten(1), x_r[g].flatten(1))
        assert torch.allclose(got[g], want.expand(3), atol=1e-6)
    assert got[6] > 0
    labels = torch.tensor([5, 1, 5, 1, 1, 5, 9])  # any labels, in any order
    got = nat(x_p, x_r, labels=labels)
    assert torch.allclose(got[[1, 3, 4]], 2.0 * mmd(x_p[[1, 3, 4]].flatten(1), x_r[[1, 3, 4]].flatten(1)).expand(3), atol=1e-6)
    assert torch.allclose(got[[0, 2, 5]], 2.0 * mmd(x_p[[0, 2, 5]].flatten(1), x_r[[0, 2, 5]].flatten(1)).expand(3), atol=1e-6)
    plan = nat.groups(7, labels)  # made once before the steps: the same terms
    streams = lambda: PerImageRandom(range(7))  # noqa: E731  (the group of one draws its views)
    assert [n for n, _, _ in plan] == [1, 3]
    assert torch.equal(nat(x_p, x_r, streams(), groups=plan), nat(x_p, x_r, streams(), labels=labels))
    with pytest.raises(ValueError, match="group"):
        Naturalness(group=0)


def test_gain_max_and_sum_match_their_formulas():
    d_r, d_t = torch.rand(3), torch.rand(3, 4)
    want_max = torch.log(1 + torch.exp(d_r[:, None] - d_t).max(1).values)
    want_sum = torch.log(1 + torch.exp(d_r[:, None] - d_t).sum(1))
    assert torch.allclose(gain(d_r, d_t, "max"), want_max, atol=1e-6)
    assert torch.allclose(gain(d_r, d_t, "sum"), want_sum, atol=1e-6)


def test_identity_distances():
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    cos = F.cosine_similarity(a, b)
    assert torch.allclose(identity_distance(a, b), ((F.normalize(a) - F.normalize(b)) ** 2).sum(1), atol=1e-6)
    assert torch.allclose(identity_distance(a, b, "cosine"), 1 - cos, atol=1e-6)
    assert torch.allclose(relative_identity_loss(a, b, a), identity_distance(a, b))
    with pytest.raises(ValueError, match="metric"):
        identity_distance(a, b, "manhattan")


def test_projection_and_8bit_quantisation_keep_the_bound():
    torch.manual_seed(2)
    x_r = (torch.rand(6, 3, 16, 16) * 255).round() / 255
    x = x_r + torch.randn_like(x_r) * 0.2
    p = project(x, x_r, EPS)
    assert (p - x_r).abs().max() <= EPS + 1e-7 and p.min() >= 0 and p.max() <= 1
    p2 = project(x, x_r, 0.5, "l2")
    assert ((p2 - x_r).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    # values a hair outside the ball (float error) never leak past 12 levels once written
    q = quantise_within(x_r + EPS * 1.0004 * torch.sign(torch.randn_like(x_r)), x_r, EPS)
    assert (q.int() - (x_r * 255).round().int()).abs().max() == 12


def test_momentum_step_normalises_per_image_and_takes_sign_steps():
    s = MomentumStep(eps=EPS, steps=10, step_size="paper", momentum=1.0)
    grad = torch.randn(2, 3, 4, 4) * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1)
    g = s.accumulate(torch.zeros_like(grad), grad)
    assert torch.allclose(g.abs().flatten(1).sum(1), torch.ones(2))
    x_r = torch.full((2, 3, 4, 4), 0.5)
    x = s.update(x_r, x_r, g)
    assert torch.allclose((x - x_r).abs(), torch.full_like(x, 1.5 / 255))
    assert MomentumStep(eps=EPS, steps=50, step_size="official").alpha == pytest.approx(1.5 * EPS / 50)
    with pytest.raises(ValueError, match="eps"):
        MomentumStep(eps=12)


def test_smooth_gradient_is_a_normalised_gaussian_per_channel():
    g = torch.zeros(2, 4, 3, 15, 15)  # (B, K, C, H, W): candidate gradients keep their shape
    g[0, 1, 2, 7, 7] = 1.0
    out = smooth_gradient(g, 5)
    assert out.shape == g.shape
    assert out.sum() == pytest.approx(1.0)  # an impulse away from the border keeps its mass
    assert out[0, 1, 2].argmax() == 7 * 15 + 7 and out[0, 1, 2, 7, 5] > 0  # spread around it, same channel only
    assert out[0, 1, :2].abs().sum() == 0 and out[1].abs().sum() == 0
    assert torch.allclose(out[0, 1, 2], out[0, 1, 2].T)  # isotropic
    assert torch.equal(smooth_gradient(g, 1), g)
    for bad in (0, 2, 4):
        with pytest.raises(ValueError, match="odd"):
            smooth_gradient(g, bad)
    with pytest.raises(ValueError, match="odd"):
        MomentumStep(smooth=4)


def test_momentum_step_smooths_before_normalising():
    grad = torch.randn(3, 3, 12, 12)
    plain, ti = MomentumStep(eps=EPS), MomentumStep(eps=EPS, smooth=3)
    g = ti.accumulate(torch.zeros_like(grad), grad)
    assert torch.allclose(g, plain.accumulate(torch.zeros_like(grad), smooth_gradient(grad, 3)))
    assert not torch.allclose(g, plain.accumulate(torch.zeros_like(grad), grad))
    assert torch.allclose(g.abs().flatten(1).sum(1), torch.ones(3))


@pytest.mark.parametrize("mode,away", [("loop", 1.0), ("batched", 1.0), ("loop", 0.3)])
def test_all_target_gradients_equal_per_target_autograd(setup, mode, away):
    net, x_r, targets = setup
    att = IdentityMaskAttack(net, grad_mode=mode, away=away)
    t_emb = att.embed_targets(targets)
    n_r = att.embed(x_r)
    x = (x_r + 0.02 * torch.randn_like(x_r)).requires_grad_(True)
    n = att.embed(x)
    got = att.objective.identity_grads(x, n, n_r, t_emb, None)
    for k in range(len(targets)):
        xk = x.detach().requires_grad_(True)
        e = att.embed(xk)
        loss = (identity_distance(e, t_emb[k].expand(len(x), -1)) - away * identity_distance(e, n_r)).sum()  # a sum: a face's gradient is batch-size free
        (want,) = torch.autograd.grad(loss, xk)
        assert torch.allclose(got[:, k], want, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(loss, relative_identity_loss(e, t_emb[k].expand(len(x), -1), n_r, away=away).sum())


@pytest.mark.parametrize("with_transform", [False, True])
def test_one_pass_step_gradient_is_identity_plus_naturalness(setup, with_transform):
    """The step's single backward pass (identity loss and MMD together) equals the two gradients
    taken one at a time, and each part matters."""
    net, x_r, targets = setup
    att = IdentityMaskAttack(net, naturalness=Naturalness(gamma=3.0, group=2))
    transform = RandomAffine() if with_transform else None
    t_emb = att.embed_targets(targets)
    n_r = att.embed(x_r)
    which = torch.tensor([0, 3, 1, 4])

    def pieces(seed):
        x = (x_r + 0.02 * torch.randn(x_r.shape, generator=torch.Generator().manual_seed(seed))).requires_grad_(True)
        xin = transform(x, PerImageRandom(torch.arange(4))) if transform is not None else x
        return x, att.embed(xin), att.objective.naturalness(x, x_r)

    x, n, nat = pieces(5)
    got = att.objective.gradient(x, n, n_r, t_emb, which, None, nat)
    x, n, nat = pieces(5)
    identity = att.objective.identity_grads(x, n, n_r, t_emb, which)
    natural = torch.autograd.grad(nat.sum(), x)[0]
    torch.testing.assert_close(got, identity + natural, atol=1e-6, rtol=1e-5)
    assert identity.abs().sum() > 0 and natural.abs().sum() > 0 and not torch.allclose(got, identity, atol=1e-6)


def _brute_force_greedy_step(att, x_r, t_emb):
    """Alg. 1 written the slow, obvious way: one image, one target, one autograd call at a time."""
    n_r = att.embed(x_r)
    out = []
    for b in range(len(x_r)):
        best = None
        for k in range(len(t_emb)):
            xb = x_r[b : b + 1].clone().requires_grad_(True)
            loss = relative_identity_loss(att.embed(xb), t_emb[k : k + 1], n_r[b : b + 1]).sum()
            (grad,) = torch.autograd.grad(loss, xb)
            g = att.step.accumulate(torch.zeros_like(grad), grad)
            cand = att.step.update(xb.detach(), x_r[b : b + 1], g)
            e = att.embed(cand)
            d_r = identity_distance(e, n_r[b : b + 1])
            d_t = torch.stack([identity_distance(e, t_emb[j : j + 1]) for j in range(len(t_emb))], -1)
            value = float(gain(d_r, d_t, "max").detach())
            if best is None or value > best[0]:
                best = (value, k, cand)
        out.append(best)
    return torch.tensor([o[1] for o in out]), torch.cat([o[2] for o in out])


def test_greedy_insertion_picks_the_brute_force_target(setup):
    net, x_r, targets = setup
    att = IdentityMaskAttack(net, MomentumStep(steps=1), GreedyInsertion())
    t_emb = att.embed_targets(targets)
    r = att(x_r, t_emb)
    want_idx, want_x = _brute_force_greedy_step(att, x_r, t_emb)
    assert torch.equal(r.last_followed, want_idx)
    assert same_image(r.x_p, want_x)


@pytest.mark.parametrize("selector", [GreedyInsertion(), GreedyInsertion("sum", every=2), NearestTarget(), FixedTarget("nearest")])
def test_choosing_inside_a_batch_equals_image_by_image(setup, selector):
    net, x_r, targets = setup
    att = IdentityMaskAttack(net, MomentumStep(steps=4), selector)
    t_emb = att.embed_targets(targets)
    batch = att(x_r, t_emb)
    for b in range(len(x_r)):
        one = att(x_r[b : b + 1], t_emb)
        assert torch.equal(one.last_followed, batch.last_followed[b : b + 1])
        assert same_image(one.x_p, batch.x_p[b : b + 1])


def test_eps_and_range_hold_after_every_step(setup):
    net, x_r, targets = setup
    seen = []

    def check(t, x, idx, obj):
        seen.append(t)
        assert (x - x_r).abs().max() <= EPS + 1e-6 and x.min() >= 0 and x.max() <= 1
        assert idx.shape == (len(x_r),) and idx.max() < len(targets)

    for sel, tf in [(GreedyInsertion(), RandomAffine()), (NearestTarget(), ResizePad(prob=1.0)), (FixedTarget(2), None)]:
        att = IdentityMaskAttack(net, MomentumStep(steps=6), sel, Naturalness(gamma=1.0), transform=tf, random_start=True)
        att(x_r, att.embed_targets(targets), on_step=check)
    assert len(seen) == 18


def test_the_attack_moves_faces_towards_targets(setup):
    net, x_r, targets = setup
    att = IdentityMaskAttack(net, MomentumStep(steps=20), GreedyInsertion(), Naturalness(gamma=0.5))
    t_emb = att.embed_targets(targets)
    n_r = att.embed(x_r)
    before = identity_distance(n_r[:, None], t_emb[None]).min(1).values
    r = att(x_r, t_emb)
    assert (r.d_t - r.d_r < before).all() and (r.d_r > 0).all()  # relative loss fell for every image
    assert r.loss[-1] < r.loss[0]


def test_greedy_every_s_keeps_the_target_between_selections(setup):
    net, x_r, targets = setup
    picks = []
    att = IdentityMaskAttack(net, MomentumStep(steps=6), GreedyInsertion(every=3))
    r = att(x_r, att.embed_targets(targets), on_step=lambda t, x, idx, o: picks.append(idx.clone()))
    assert r.choice_rank.shape == (2, len(x_r))  # candidates were scored at steps 0 and 3 only: `every` is honoured
    assert torch.equal(picks[0], picks[1]) and torch.equal(picks[1], picks[2])
    assert torch.equal(picks[3], picks[4]) and torch.equal(picks[4], picks[5])


def test_input_diversity_keeps_shape_and_passes_gradients():
    x = torch.rand(2, 3, 112, 112, requires_grad=True)
    for tf in (ResizePad(prob=1.0), RandomAffine(prob=1.0)):
        y = tf(x)
        assert y.shape == x.shape and not torch.allclose(y, x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert grad.abs().sum() > 0
    assert torch.equal(ResizePad(prob=0.0)(x), x)


@pytest.mark.parametrize("make", [lambda: ResizePad(prob=0.7), lambda: RandomAffine(), lambda: PostingTransform(base=RandomAffine())])
def test_random_transforms_draw_per_face_so_the_batch_changes_nothing(make):
    x = smooth_images(6, 4).double()
    seeds = [11, 12, 13, 14, 15, 16]
    tf = make()
    whole = tf(x, PerImageRandom(seeds))
    parts = torch.cat([tf(x[:2], PerImageRandom(seeds[:2])), tf(x[2:], PerImageRandom(seeds[2:]))])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, tf(x, PerImageRandom([s + 100 for s in seeds])))
    with pytest.raises(ValueError, match="streams"):
        tf(x, PerImageRandom(seeds[:3]))


class InputScaled(torch.nn.Module):
    """A member whose input gradients are small: it sees a low-contrast copy of the face."""

    def __init__(self, net, contrast):
        super().__init__()
        self.net, self.contrast = net, contrast

    def forward(self, x):
        return self.net(0.5 + (x - 0.5) * self.contrast)


def _members_fooled(members, x_p, x_r, targets):
    out = []
    for m in members:
        e, e_r, e_t = (F.normalize(m(v), dim=-1) for v in (x_p, x_r, targets))
        d_t = identity_distance(e[:, None], e_t[None]).min(1).values
        out.append((d_t < identity_distance(e, e_r)).float().mean().item())
    return out


@pytest.mark.parametrize("which", ["all", "one"])
def test_unbalanced_member_gradients_sum_to_the_ensemble_gradient(setup, which):
    from tipim.attack import MemberBalance
    from tipim.models import Ensemble

    net, x_r, targets = setup
    ens = Ensemble([net, InputScaled(TinyFR(seed=5).eval(), 0.5)], weights=[2.0, 1.0])
    plain = IdentityMaskAttack(ens, channels_last=False)
    split = IdentityMaskAttack(ens, channels_last=False, balance=MemberBalance(normalise=False, temperature=None))
    t_emb = plain.embed_targets(targets)
    x = (x_r + 0.01).clamp(0, 1).requires_grad_(True)
    n_r = plain.embed(x_r).detach()
    n = plain.embed(x)
    parts = split.embed_parts(x)
    sel = None if which == "all" else torch.tensor([0, 3, 1, 4])
    a = plain.objective.identity_grads(x, n, n_r, t_emb, sel)
    b = split.objective.identity_grads(x, torch.cat(parts, -1), n_r, t_emb, sel, parts)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_member_weights_are_the_smooth_worst_member_gradient():
    from tipim.attack import member_weights

    losses = torch.tensor([[0.3, -0.2, 0.1], [-0.5, -0.4, -0.6]], requires_grad=True)
    tau = 0.1
    (tau * torch.logsumexp(losses / tau, -1)).sum().backward()
    w = member_weights(losses.detach(), tau)
    torch.testing.assert_close(w / 3, losses.grad)
    assert torch.equal(member_weights(losses.detach(), None), torch.ones(2, 3))
    assert w[0].argmax() == 0 and w[1].argmax() == 1  # the least-fooled member leads


def test_balanced_ensemble_fools_the_member_with_small_gradients(setup):
    """The summed objective moves only the member with large input gradients; balancing moves both."""
    from tipim.attack import MemberBalance
    from tipim.models import Ensemble

    net, _, targets = setup
    members = [net, InputScaled(TinyFR(seed=5).eval(), 0.3)]
    ens = Ensemble(members)
    x_r = smooth_images(16, 1)
    fooled = {}
    for name, balance in (("plain", None), ("balanced", MemberBalance())):
        attack = IdentityMaskAttack(ens, MomentumStep(4 / 255, 10), GreedyInsertion(), channels_last=False, balance=balance)
        r = attack(x_r, attack.embed_targets(targets))
        assert (r.x_p - x_r).abs().max() <= 4 / 255 + 1e-6
        fooled[name] = _members_fooled(members, r.x_p, x_r, targets)
    assert fooled["plain"][0] == 1.0 and fooled["plain"][1] < 0.5, fooled
    assert min(fooled["balanced"]) == 1.0, fooled


@pytest.mark.parametrize(
    "transform, dropout", [(PostingTransform(base=RandomAffine()), 0.0), (ResizePad(prob=0.7), 0.0), (None, 0.2)]
)
def test_batch_size_changes_no_face(setup, transform, dropout):
    """Everything random and the MMD term on: one batch of 8 equals two of 4 (the MMD groups are
    the same 4 faces), bit for bit in float64, where the kernels themselves are batch-size free."""
    net, _, targets = setup
    net = net.double()
    x_r = smooth_images(8, 5).double()
    seeds = list(range(100, 108))
    att = IdentityMaskAttack(
        net, MomentumStep(steps=4), GreedyInsertion(every=2), Naturalness(1.0, group=4), transform, random_start=True, feature_dropout=dropout
    )
    t_emb = att.embed_targets(targets.double())
    one = att(x_r, t_emb, rng=PerImageRandom(seeds))
    two = [att(x_r[i : i + 4], t_emb, rng=PerImageRandom(seeds[i : i + 4])) for i in (0, 4)]
    assert torch.equal(one.x_p, torch.cat([r.x_p for r in two]))
    assert torch.equal(one.last_followed, torch.cat([r.last_followed for r in two]))
    other = att(x_r, t_emb, rng=PerImageRandom([s + 1 for s in seeds]))
    assert not torch.equal(one.x_p, other.x_p)  # the streams do matter


def _greedy_variants(setup, option: str):
    """Exact greedy and a cheaper variant on the same 8 faces, in float64: ``run(m)`` attacks them
    with ``GreedyInsertion(**{option: m})`` (0 = exact) from the same random streams."""
    net, _, targets = setup
    net = net.double()
    x_r = smooth_images(8, 7).double()
    make = lambda m: IdentityMaskAttack(net, MomentumStep(steps=4), GreedyInsertion(**{option: m}))  # noqa: E731
    t_emb = make(0).embed_targets(targets.double())
    return lambda m: make(m)(x_r, t_emb, rng=PerImageRandom(list(range(8)))), len(targets)


def test_greedy_shortlist_makes_the_papers_choice_whenever_it_is_on_the_list(setup):
    run, k = _greedy_variants(setup, "shortlist")
    exact, short = run(0), run(1)
    assert exact.choice_rank.shape == (4, 8) and (short.choice_rank[1:] == 0).all()  # the first step tries all
    assert torch.equal(short.choice_rank[0], exact.choice_rank[0])
    on_list = (exact.choice_rank[1:] == 0).all(0)  # every later choice of this face was its nearest target
    assert on_list.any() and not on_list.all()  # both cases occur on these faces
    assert torch.equal(short.x_p[on_list], exact.x_p[on_list]) and torch.equal(short.last_followed[on_list], exact.last_followed[on_list])
    assert torch.equal(run(k).x_p, exact.x_p)  # m >= K: the paper
    with pytest.raises(ValueError, match="shortlist"):
        GreedyInsertion(shortlist=-1)


def test_greedy_confirm_makes_the_papers_choice_whenever_the_estimate_ranks_it_among_the_m(setup):
    """``confirm=m`` forwards only the m candidates the first-order estimate ranks best: the same
    images as exact greedy for every face whose choices all ranked < m, and the same as exact when
    m >= K. The estimate must be informative: the exact choice ranks first more often than chance."""
    run, k = _greedy_variants(setup, "confirm")
    exact = run(0)
    assert exact.estimate_rank.shape == (4, 8) and (exact.estimate_rank == 0).float().mean() > 1 / k
    for m in (1, 2):
        cheap = run(m)
        same = (exact.estimate_rank < m).all(0)  # every choice of this face was among the estimate's m best
        assert same.any()
        assert torch.equal(cheap.x_p[same], exact.x_p[same]) and torch.equal(cheap.last_followed[same], exact.last_followed[same])
        assert (cheap.estimate_rank < m).all()  # it can only choose among those it confirmed
    assert torch.equal(run(k).x_p, exact.x_p)
    with pytest.raises(ValueError, match="confirm"):
        GreedyInsertion(confirm=-1)


def test_shortlist_of_one_follows_the_steps_own_embedding_without_a_candidate_forward(setup):
    """After the first step one candidate is left: no forward scores it; each face follows the
    target nearest the embedding its gradient pass saw (through the transform), as MT-DIM does."""
    net, _, targets = setup
    x_r, steps = smooth_images(4, 3), 5
    grad_pass, no_grad = [], []
    net.register_forward_hook(lambda m, i, o: (grad_pass if torch.is_grad_enabled() else no_grad).append(o.detach()))
    runs = {}
    for m in (1, 2):
        att = IdentityMaskAttack(net, MomentumStep(steps=steps), GreedyInsertion(shortlist=m), transform=RandomAffine(prob=1.0))
        t_emb = att.embed_targets(targets)
        grad_pass.clear(), no_grad.clear()
        chosen = []
        att(x_r, t_emb, rng=PerImageRandom(list(range(4))), on_step=lambda t, x, idx, obj: chosen.append(idx.clone()))
        runs[m] = len(no_grad)
        if m == 1:
            assert len(grad_pass) == steps
            for t in range(1, steps):
                assert torch.equal(chosen[t], identity_distance(grad_pass[t][:, None], t_emb[None], att.metric).argmin(1))
    assert runs[2] - runs[1] == steps - 1  # one candidate forward per step after the first, saved
    every3 = GreedyInsertion(every=3, shortlist=1)
    current, two_targets = torch.tensor([0, 1]), torch.eye(2, 4)
    swapped = torch.eye(2, 4)[[1, 0]]  # face 0 now nearest target 1, face 1 nearest target 0
    assert torch.equal(every3.assign(1, swapped, two_targets, current, "cosine"), current)  # kept between greedy steps
    assert torch.equal(every3.assign(3, swapped, two_targets, current, "cosine"), torch.tensor([1, 0]))


def test_feature_dropout_drops_a_share_of_conv_outputs_only_while_active(setup):
    net, x_r, _ = setup
    clean = net(x_r)
    drop = FeatureDropout(0.25).attach(net)
    assert drop.layers == 2 and torch.equal(net(x_r), clean)  # inert outside ``active``
    seen = []
    net.conv1.register_forward_hook(lambda m, i, o: seen.append(o))  # after the dropout hook
    with drop.active(PerImageRandom(range(len(x_r)))):
        noisy = net(x_r)
    zeros = float((seen[-1] == 0).float().mean())
    assert 0.2 < zeros < 0.3 and not torch.allclose(noisy, clean)
    with drop.active(PerImageRandom(range(len(x_r)))):
        assert torch.equal(net(x_r), noisy)  # the faces' own streams decide the masks
        other = []  # another thread (the photo writer's) embeds with the same network meanwhile
        worker = threading.Thread(target=lambda: other.append(net(x_r)))
        worker.start()
        worker.join()
        assert torch.equal(other[0], clean)
    with pytest.raises(ValueError, match="random streams"), drop.active(PerImageRandom(range(2))):
        net(x_r)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        FeatureDropout(0.1).attach(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FeatureDropout(1.0)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_judge_measures_in_the_attacks_metric_and_success_means_nearer_a_target(metric):
    torch.manual_seed(3)
    e_p, e_r, e_t = torch.randn(5, 8), torch.randn(5, 8), 3 * torch.randn(4, 8)  # not normalised
    d_r, d_t, nearest = judge(e_p, e_r, e_t, metric)
    direct = lambda a, b: (2 - 2 * F.cosine_similarity(a, b, dim=-1)) / (1 if metric == "l2" else 2)  # noqa: E731
    for i in range(5):
        to_targets = torch.stack([direct(e_p[i], t) for t in e_t])
        assert torch.allclose(d_t[i], to_targets.min(), atol=1e-6) and nearest[i] == to_targets.argmin()
        assert torch.allclose(d_r[i], direct(e_p[i], e_r[i]), atol=1e-6)
    on_target = torch.stack([e_t[2] * 0.5, e_r[1]])  # a face moved onto target 2, a face left as it was
    d_r, d_t, nearest = judge(on_target, torch.stack([e_r[0], e_r[1]]), e_t, metric)
    assert surrogate_success(d_t, d_r).tolist() == [True, False] and nearest[0] == 2


def test_a_compiled_surrogate_runs_the_same_attack(setup):
    """``compile``: the attack runs through ``torch.compile``'s graphs (a counting backend shows
    they are used) and writes what the eager attack writes; the weights are registered once."""
    net, x_r, targets = setup
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    kw = dict(selector=GreedyInsertion(), naturalness=Naturalness(gamma=1.0, group=2), step=MomentumStep(steps=4))
    eager = IdentityMaskAttack(net, **kw)
    compiled = IdentityMaskAttack(net, compile=counting_backend, **kw)
    t_emb = eager.embed_targets(targets)
    torch.manual_seed(0)
    want = eager(x_r, t_emb)
    torch.manual_seed(0)
    got = compiled(x_r, t_emb)
    assert graphs, "the compiled network was never called"
    assert compiled.compiled and not eager.compiled  # the photo writer's thread keeps off a compiled network
    assert same_image(got.x_p, want.x_p) and torch.equal(got.last_followed, want.last_followed)
    assert [k for k, _ in compiled.named_parameters()] == [k for k, _ in eager.named_parameters()]
    with pytest.raises(ValueError, match="compile and feature_dropout cannot be combined"):
        IdentityMaskAttack(net, compile=True, feature_dropout=0.1)


@pytest.mark.parametrize("shape", [(112, 112), (112, 96), (20, 33)])
def test_batched_down_and_up_resize_is_kornias_per_image_resize(shape):
    """``down_up`` (the posting transform's resize, one pair of batched products) computes what
    kornia's antialiased resize down and bilinear resize up compute image by image: to float64
    rounding, for shrinks small and large (a wider Gaussian), odd shapes, the 8-pixel floor, and
    images left alone; and gradients pass."""
    import kornia.geometry.transform as KT

    from tipim.attack.transforms import down_up

    h, w = shape
    x = torch.rand(6, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sizes = [None, (round(h * 0.6), round(w * 0.6)), (h - 1, w - 2), None, (max(8, round(h * 0.25)), max(8, round(w * 0.25))), (8, 8)]
    want = x.clone()
    for i, s in enumerate(sizes):
        if s is not None:
            small = KT.resize(x[i : i + 1], s, interpolation="bilinear", antialias=True)
            want[i] = KT.resize(small, (h, w), interpolation="bilinear")[0]
    got = down_up(x.requires_grad_(True), sizes)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert torch.equal(got[0], x[0]) and not torch.allclose(got[1], x[1])
    (g,) = torch.autograd.grad(got.sum(), x)
    assert g[1].abs().sum() > 0 and torch.equal(g[0], torch.ones_like(g[0]))



@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 1e-6)])
def test_affine_grid_is_torchs(dtype, tol):
    """The warps' sampling grid, built by broadcasting, is ``F.affine_grid``'s (align_corners
    False) for square and oblong images, to float rounding."""
    from tipim.attack.transforms import affine_grid

    theta = torch.randn(4, 2, 3, dtype=dtype, generator=torch.Generator().manual_seed(2)).to(dtype)
    for h, w in [(112, 112), (37, 50)]:
        want = F.affine_grid(theta, [4, 3, h, w], align_corners=False)
        torch.testing.assert_close(affine_grid(theta, h, w), want, atol=tol, rtol=0)


def test_a_drawn_choice_is_torch_where_and_skips_what_no_image_takes():
    """``chosen``: the same values and gradients as ``torch.where`` for all, none and some images,
    and the changed images are not computed when no image takes them."""
    from tipim.attack.transforms import chosen

    calls = []
    for keep in ([True, True], [False, False], [True, False]):
        x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
        y = lambda: calls.append(1) or (x * 3).sin()  # noqa: E731
        mask = torch.tensor(keep)
        got = chosen(mask, y, x)
        want = torch.where(mask.view(2, 1, 1, 1), y(), x)
        assert torch.equal(got, want)
        assert torch.equal(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0])
    assert len(calls) == 5  # the (False, False) call computed nothing for ``chosen``


def test_shift_then_resize_is_kornias_border_warp_then_resize():
    """``down_up``'s whole-pixel shifts (the posting transform's) are kornia's border-padded
    translation, row and column each way, and compose with the resize in that order."""
    import kornia.geometry.transform as KT

    from tipim.attack.transforms import down_up

    x = torch.rand(3, 3, 40, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    shifts = [(2, -3), (-1, 0), (3, 3)]  # (rows, columns)
    m = torch.eye(2, 3, dtype=torch.float64).repeat(3, 1, 1)
    m[:, :, 2] = torch.tensor([[dx, dy] for dy, dx in shifts], dtype=torch.float64)
    shifted = KT.warp_affine(x, m, (40, 36), padding_mode="border", align_corners=True)
    torch.testing.assert_close(down_up(x, [None] * 3, shifts), shifted, atol=1e-12, rtol=0)
    want = KT.resize(KT.resize(shifted[:1], (24, 20), antialias=True), (40, 36))
    torch.testing.assert_close(down_up(x[:1], [(24, 20)], shifts[:1]), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(112, 112), (57, 203)])
def test_jpeg_round_trip_is_kornias_differentiable_codec(shape):
    """``jpeg_round_trip`` (matrix form) computes kornia's ``jpeg_codec_differentiable``, values
    and gradients, to float64 rounding: per-image qualities across libjpeg's two scaling
    regimes, and sizes that need padding to 16. In float32 the two differ by float rounding
    only (below 1e-5 on [0, 1] pixels)."""
    from kornia.enhance import jpeg_codec_differentiable

    from tipim.attack.jpeg import jpeg_round_trip

    x = torch.rand(3, 3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    quality = torch.tensor([30.0, 55.0, 95.0], dtype=torch.float64)
    want, got = jpeg_codec_differentiable(x, quality), jpeg_round_trip(x, quality)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert (got - x).abs().mean() > 1e-3  # it does compress
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(g_got, g_want, atol=1e-9, rtol=1e-9)
    x32 = x.detach().float()
    torch.testing.assert_close(jpeg_round_trip(x32, quality.float()), jpeg_codec_differentiable(x32, quality.float()), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one value per image"):
        jpeg_round_trip(x32, quality[:2].float())
