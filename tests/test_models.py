import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tipim.align.transform import ARCFACE_TEMPLATE, DLIB150_TEMPLATE
from tipim.models import Embedder, Ensemble, OnnxEmbedder, TimmEmbedder, TorchScriptEmbedder

ZOO = ["arcface-mbf", "sface", "facenet", "dlib-resnet", "edgeface-s"]
REF = json.loads((Path(__file__).parent / "data" / "reference_embeddings.json").read_text())


def centre_crops(lfw, size, names):
    out = []
    for n in names:
        img = np.asarray(Image.open(lfw / n).convert("RGB"))
        t, l = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        out.append(torch.from_numpy(img[t : t + size, l : l + size].copy()).permute(2, 0, 1))
    return torch.stack(out).float()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_embedder_shapes_and_gradients(zoo, name):
    m = zoo(name)
    x = torch.rand(3, 3, 112, 112, requires_grad=True)
    y = m(x)
    assert y.shape == (3, m.dim) and m.dim in (128, 512)
    (F.normalize(y, dim=1)[:, 0]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in m.parameters())  # frozen
    m.train()
    assert not m.net.training  # batch-norm statistics never move


def test_embedder_rejects_wrong_input_with_a_clear_message(zoo):
    m = zoo("arcface-mbf")
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\).*tipim data align"):
        m(torch.rand(2, 3, 160, 160))


@pytest.mark.parametrize("name", ["arcface-mbf", "sface", "edgeface-s"])
def test_onnx_ports_match_onnxruntime_on_real_faces(zoo, lfw, name):
    ort = pytest.importorskip("onnxruntime")
    from tipim.zoo.registry import artifact_path

    x = centre_crops(lfw, 112, REF["images"]) / 255.0
    m = zoo(name)
    with torch.no_grad():
        ours = m(x).numpy()
        native = m.preprocess(x).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(artifact_path(name)), opts, providers=["CPUExecutionProvider"])
    # one image at a time: the SFace and EdgeFace graphs were exported at batch 1 (our ports take any batch)
    theirs = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: native[i : i + 1]})[0] for i in range(len(x))])
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())


@pytest.mark.parametrize("name", ["dlib-resnet", "facenet"])
def test_ports_match_the_original_runtime(zoo, lfw, name):
    """Reference embeddings were computed once with dlib 20 / TensorFlow 2.21 (scripts/reference_embeddings.py)."""
    m = zoo(name)
    x = centre_crops(lfw, REF["crop"][name], REF["images"])
    if name == "facenet":
        n = x[0].numel()
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(n**-0.5)
    with torch.no_grad():
        ours = m.net(x)
    ref = torch.tensor(REF[name])
    assert (ours - ref).abs().max() < 1e-4
    # and the embeddings tell people apart: each image is nearest to itself
    assert torch.equal(torch.cdist(ours, ref).argmin(1), torch.arange(len(ref)))


def test_template_warp_maps_arcface_landmarks_onto_the_native_template():
    """Put a dot at each ArcFace landmark; after the wrapper's warp it must sit where the fitted
    similarity sends it, which is within a few pixels of the dlib template."""
    e = Embedder(torch.nn.Flatten(), native_size=150, template=DLIB150_TEMPLATE.tolist())
    m = e.warp[0]
    mapped = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    assert (mapped - DLIB150_TEMPLATE).norm(dim=1).max() < 4.0
    for k in range(5):
        img = torch.zeros(1, 3, 112, 112)
        x, y = ARCFACE_TEMPLATE[k].round().long().tolist()
        img[0, :, y - 1 : y + 2, x - 1 : x + 2] = 1.0
        out = e.preprocess(img)[0, 0]
        ys, xs = torch.nonzero(out > 0.2, as_tuple=True)
        w = out[ys, xs]
        centre = torch.stack([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
        dot = ARCFACE_TEMPLATE[k].round() @ m[:, :2].T + m[:, 2]
        assert torch.allclose(centre, dot, atol=0.5), (k, centre, dot)


def test_prewhiten_standardises_each_image():
    e = Embedder(torch.nn.Identity(), native_size=160, pixel_scale=255.0, prewhiten=True)
    x = e.preprocess(torch.rand(2, 3, 112, 112) * 0.5)
    assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x.std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)


def test_ensemble_distance_is_the_weighted_sum_of_member_distances(zoo):
    a, b = zoo("arcface-mbf"), zoo("dlib-resnet")
    ens = Ensemble([a, b], weights=[3.0, 1.0])
    x, y = torch.rand(2, 3, 112, 112), torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        d = ((ens(x) - ens(y)) ** 2).sum(1)
        da = ((F.normalize(a(x)) - F.normalize(a(y))) ** 2).sum(1)
        db = ((F.normalize(b(x)) - F.normalize(b(y))) ** 2).sum(1)
    assert torch.allclose(d, 0.75 * da + 0.25 * db, atol=1e-5)
    assert ens.dim == 512 + 128
    with pytest.raises(ValueError, match="weights"):
        Ensemble([a, b], weights=[1.0])


class _TinyFR(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 16)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_user_onnx_and_torchscript_models_load_and_match(tmp_path):
    net = _TinyFR().eval()
    x = torch.rand(2, 3, 112, 112)
    torch.onnx.export(net, (x * 2 - 1,), tmp_path / "m.onnx", input_names=["x"], dynamic_axes={"x": {0: "b"}}, dynamo=False, opset_version=13)
    torch.jit.save(torch.jit.trace(net, x), tmp_path / "m.pt")
    with torch.no_grad():
        want = net((x * 255 - 127.5) / 127.5)
        got_onnx = OnnxEmbedder(str(tmp_path / "m.onnx"))(x)
        got_ts = TorchScriptEmbedder(str(tmp_path / "m.pt"), pixel_scale=255.0, mean=[127.5] * 3, std=[127.5] * 3)(x)
    assert torch.allclose(got_onnx, want, atol=1e-5) and torch.allclose(got_ts, want, atol=1e-5)


def test_user_model_checksum_and_missing_file(tmp_path):
    torch.jit.save(torch.jit.script(_TinyFR()), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="sha256"):
        TorchScriptEmbedder(str(tmp_path / "m.pt"), sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxEmbedder(str(tmp_path / "nope.onnx"))


def test_timm_checkpoint_loads_without_pickled_code(tmp_path):
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=64).eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "ckpt.pth")
    m = TimmEmbedder("resnet18", str(tmp_path / "ckpt.pth"), embedding_dim=64)
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(m(x), net((x - 0.5) / 0.5), atol=1e-5)
    # a checkpoint that smuggles a Python object is refused by weights_only loading
    torch.save({"state_dict": net.state_dict(), "evil": _TinyFR()}, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        TimmEmbedder("resnet18", str(tmp_path / "bad.pth"), embedding_dim=64)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fast_prelu_gradient_is_torchs_to_the_bit(memory_format):
    from tipim.models.prelu import prelu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 9, 7, generator=g).contiguous(memory_format=memory_format)
    x[0, :, 0, :3], x[1, :, 1, :3] = 0.0, -0.0  # exact zeros take the slope, as in torch's kernel
    up = torch.randn(x.shape, generator=g)
    for w in (torch.rand(16, generator=g) - 0.3, torch.tensor([0.25]), torch.tensor([-0.5])):  # per channel (some negative), shared
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want_y, got_y = F.prelu(a, w), prelu(b, w)
        (want,), (got,) = torch.autograd.grad(want_y, a, up), torch.autograd.grad(got_y, b, up, retain_graph=True)
        assert torch.equal(got_y.view(torch.int32), want_y.view(torch.int32))
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # signed zeros included
        (again,) = torch.autograd.grad(got_y, b, -up)  # a second backward through the graph (K candidate gradients)
        assert torch.equal(again, torch.autograd.grad(F.prelu(a, w), a, -up)[0])


def test_fast_prelu_passes_gradcheck_and_leaves_trained_slopes_to_torch():
    from tipim.models.prelu import prelu

    x = (torch.rand(2, 3, 4, 4, dtype=torch.float64) - 0.5).requires_grad_(True)
    w = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: prelu(v, w), (x,))
    assert prelu(x, w).grad_fn.name() == "MulBackward0"  # x * d: autograd's own one-kernel backward
    trained = w.clone().requires_grad_(True)
    y = prelu(x, trained)
    assert "prelu" in y.grad_fn.name().lower() and torch.autograd.grad(y.sum(), trained)[0].abs().sum() > 0



def test_fast_prelu_under_batched_gradients_and_torch_compile():
    """The engine's ``grad_mode='batched'`` (one vmapped backward for K cotangents) and its
    ``compile`` option both go through ``x * d``: the same gradients as torch's."""
    from tipim.models.prelu import prelu

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 5, generator=g)
    w = torch.rand(4, generator=g) - 0.2
    cot = torch.randn(3, *x.shape, generator=g)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want = torch.autograd.grad(F.prelu(a, w), a, cot, is_grads_batched=True)[0]
    got = torch.autograd.grad(prelu(b, w), b, cot, is_grads_batched=True)[0]
    assert torch.equal(got, want)
    c = x.clone().requires_grad_(True)
    compiled = torch.compile(lambda v: prelu(v, w) * 2, backend="aot_eager")
    assert torch.equal(torch.autograd.grad(compiled(c), c, cot[0])[0], torch.autograd.grad(F.prelu(a, w) * 2, a, cot[0])[0])

def test_zoo_onnx_graphs_call_prelu_and_conv_directly_with_the_converters_bits(zoo):
    """arcface-mbf as the zoo loads it (PReLUs and convolutions called as functions, the PReLU's
    faster backward) against onnx2torch's own graph: the same parameters, outputs and input
    gradients, bit for bit, channels-last (as the attack runs it) and not."""
    from tipim.models.prelu import onnx_prelu
    from tipim.models.zoo import _onnx_to_torch
    from tipim.zoo.registry import artifact_path

    fast = zoo("arcface-mbf").net
    plain = _onnx_to_torch(artifact_path("arcface-mbf"), direct=False).eval()
    calls = [n.target for n in fast.graph.nodes if n.op == "call_function"]
    assert calls.count(onnx_prelu) == 34 and calls.count(torch.conv2d) == 49
    assert not any(isinstance(fast.get_submodule(n.target), torch.nn.Conv2d) for n in fast.graph.nodes if n.op == "call_module")
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    v = torch.randn(2, 512, generator=torch.Generator().manual_seed(2))
    was = torch.channels_last if fast.get_parameter("Conv_0.weight").is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    for fmt in (torch.contiguous_format, torch.channels_last):
        outs = []
        for net in (fast, plain):
            net.to(memory_format=fmt)
            xx = x.clone().contiguous(memory_format=fmt).requires_grad_(True)
            y = net(xx)
            outs.append((y.detach(), torch.autograd.grad(y, xx, v)[0]))
        fast.to(memory_format=was)  # the session's shared model as it was
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), fmt
