"""dlib's ResNet-29 face descriptor, read from dlib's own ``.dat`` file without dlib.

dlib serialises integers as one header byte (low nibble: byte count, bit 0x80: sign) then the
magnitude little-endian; parameter tensors as version 2, four dims, raw float32. The network in
``dlib_face_recognition_resnet_model_v1.dat`` is the one of ``dnn_face_recognition_ex.cpp``:
stem conv 7x7/2, affine, relu, max-pool 3x3/2, then residual levels of 32/64/128/256 filters,
global average pool and a 128-d fully connected layer without bias.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0**exponent

    def string(self) -> str:
        n = self.int()
        s = self.data[self.pos : self.pos + n].decode("ascii")
        self.pos += n
        return s

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"unsupported dlib tensor version {version} at byte {self.pos}")
        dims = [self.int() for _ in range(4)]
        count = int(np.prod(dims))
        arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).copy()
        self.pos += 4 * count
        return arr


def _layers(data: bytes, name: bytes) -> list[int]:
    """Byte offsets just past each serialised layer-name string ``name`` (length-prefixed)."""
    token = bytes([0x01, len(name)]) + name
    return [m.end() for m in re.finditer(re.escape(token), data)]


def read_dlib_resnet(path: str | Path) -> dict:
    """Parse the layers the network needs: input means, 29 convs, 29 affines, the fc matrix."""
    data = Path(path).read_bytes()
    (inp,) = _layers(data, b"input_rgb_image_sized")
    r = _Reader(data, inp)
    means = [r.float(), r.float(), r.float()]
    convs = []
    for pos in _layers(data, b"con_4"):
        r = _Reader(data, pos)
        params = r.tensor()
        nf, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        nin = (params.size - nf) // (nf * nr * nc)
        w = params[: nf * nin * nr * nc].reshape(nf, nin, nr, nc)
        convs.append(dict(weight=w, bias=params[nf * nin * nr * nc :], stride=(sy, sx), padding=(py, px)))
    affines = []
    for pos in _layers(data, b"affine_"):
        params = _Reader(data, pos).tensor()
        half = params.size // 2
        affines.append(dict(gamma=params[:half], beta=params[half:]))
    (fc,) = _layers(data, b"fc_2")
    r = _Reader(data, fc)
    n_out, n_in = r.int(), r.int()
    fc_w = r.tensor().reshape(n_in, n_out)
    if len(convs) != 29 or len(affines) != 29:
        raise ValueError(f"{path}: expected 29 conv and 29 affine layers, found {len(convs)} and {len(affines)}")
    return dict(means=means, convs=convs, affines=affines, fc=fc_w)


class _ConvAffine(nn.Module):
    def __init__(self, conv: dict, affine: dict):
        super().__init__()
        self.conv = nn.Conv2d(
            conv["weight"].shape[1], conv["weight"].shape[0], conv["weight"].shape[2:], conv["stride"], conv["padding"]
        )
        self.conv.weight.data = torch.from_numpy(conv["weight"])
        self.conv.bias.data = torch.from_numpy(conv["bias"])
        self.register_buffer("gamma", torch.from_numpy(affine["gamma"]).view(1, -1, 1, 1))
        self.register_buffer("beta", torch.from_numpy(affine["beta"]).view(1, -1, 1, 1))

    def forward(self, x):
        return self.conv(x) * self.gamma + self.beta


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, the smaller tensor zero-padded."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t):
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class _Residual(nn.Module):
    def __init__(self, first: _ConvAffine, second: _ConvAffine, down: bool):
        super().__init__()
        self.first, self.second, self.down = first, second, down

    def forward(self, x):
        y = self.second(F.relu(self.first(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_prev(y, shortcut))


# (filters, downsample) per residual block, input to output, as in dnn_face_recognition_ex.cpp.
_BLOCKS = [(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
_BLOCKS += [(256, True)] + [(256, False)] * 2 + [(256, True)]


class DlibResNet(nn.Module):
    """Input: RGB 0..255, 150x150 face chip. Output: dlib's 128-d descriptor."""

    def __init__(self, path: str | Path):
        super().__init__()
        p = read_dlib_resnet(path)
        self.register_buffer("means", torch.tensor(p["means"], dtype=torch.float32).view(1, 3, 1, 1))
        pairs = [_ConvAffine(c, a) for c, a in zip(p["convs"], p["affines"])]
        self.stem = pairs[0]
        self.blocks = nn.Sequential(
            *(_Residual(pairs[1 + 2 * i], pairs[2 + 2 * i], down) for i, (_, down) in enumerate(_BLOCKS))
        )
        for blk, (nf, _) in zip(self.blocks, _BLOCKS):
            if blk.second.conv.out_channels != nf:
                raise ValueError(f"{path}: unexpected layer width {blk.second.conv.out_channels}, expected {nf}")
        self.fc = nn.Linear(p["fc"].shape[0], p["fc"].shape[1], bias=False)
        self.fc.weight.data = torch.from_numpy(np.ascontiguousarray(p["fc"].T))

    def forward(self, x):
        x = (x - self.means) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


__all__ = ["DlibResNet", "read_dlib_resnet"]
