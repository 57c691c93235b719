"""MTCNN face detector with five landmarks (Zhang et al. 2016).

The P-, R- and O-net definitions and the cascade below are taken from facenet-pytorch 2.6.0
(https://github.com/timesler/facenet-pytorch, MIT licence, Copyright (c) 2019 Timothy Esler),
with the file I/O, OpenCV/PIL branches and implicit weight downloads removed, and the three nets
built from their shapes (``_Stage``: the same layers, names and arithmetic). The weights are the
``pnet.pt``/``rnet.pt``/``onet.pt`` files of that wheel, fetched and checksummed by the zoo and
loaded with ``torch.load(weights_only=True)``.
"""
# ruff: noqa
import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate
from torchvision.ops.boxes import batched_nms

from tipim.zoo.registry import artifact_path


def fixed_batch_process(im_data, model):
    batch_size = 512
    out = []
    for i in range(0, len(im_data), batch_size):
        batch = im_data[i:(i+batch_size)]
        out.append(model(batch))

    return tuple(torch.cat(v, dim=0) for v in zip(*out))


def candidate_crops(imgs, image_inds, bounds, size):
    """Each candidate box cut from its image, resampled to the next net's input size and scaled
    as the nets were trained."""
    y, ey, x, ex = bounds
    im_data = []
    for k in range(len(y)):
        if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1):
            img_k = imgs[image_inds[k], :, (y[k] - 1):ey[k], (x[k] - 1):ex[k]].unsqueeze(0)
            im_data.append(imresample(img_k, (size, size)))
    return (torch.cat(im_data, dim=0) - 127.5) * 0.0078125


class _Stage(nn.Module):
    """One net of the cascade, built from its shape: convolutions (each with a PReLU, some with a
    max-pool), an optional dense layer, then its heads; the first head's softmax is the face score,
    returned last. Layers are named as the weight files name them (conv1, prelu1, ..., dense5_2)."""

    def __init__(self, convs, pools, dense=None, heads=(2, 4)):
        super().__init__()
        self.trunk = []
        for i, (cin, cout, k) in enumerate(convs, 1):
            self._trunk(f"conv{i}", nn.Conv2d(cin, cout, kernel_size=k))
            self._trunk(f"prelu{i}", nn.PReLU(cout))
            if i in pools:
                self._trunk(f"pool{i}", nn.MaxPool2d(*pools[i], ceil_mode=True))
        n, width = len(convs) + 1, convs[-1][1]
        if dense:
            self._trunk(f"dense{n}", nn.Linear(width * dense[0], dense[1]))  # flattened as (x, y, channel), Caffe's order
            self._trunk(f"prelu{n}", nn.PReLU(dense[1]))
            n, width = n + 1, dense[1]
        self.heads = [f"{'dense' if dense else 'conv'}{n}_{j}" for j in range(1, len(heads) + 1)]
        for name, out in zip(self.heads, heads):
            self.add_module(name, nn.Linear(width, out) if dense else nn.Conv2d(width, out, kernel_size=1))
        self.softmax = nn.Softmax(dim=1)

    def _trunk(self, name, layer):
        self.add_module(name, layer)
        self.trunk.append(name)

    def forward(self, x):
        for name in self.trunk:
            if name.startswith("dense"):
                x = x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)
            x = getattr(self, name)(x)
        score, *rest = (getattr(self, name)(x) for name in self.heads)
        return (*rest, self.softmax(score))


class PNet(_Stage):
    def __init__(self):
        super().__init__([(3, 10, 3), (10, 16, 3), (16, 32, 3)], pools={1: (2, 2)})


class RNet(_Stage):
    def __init__(self):
        super().__init__([(3, 28, 3), (28, 48, 3), (48, 64, 2)], pools={1: (3, 2), 2: (3, 2)}, dense=(9, 128))


class ONet(_Stage):
    def __init__(self):
        super().__init__([(3, 32, 3), (32, 64, 3), (64, 64, 3), (64, 128, 2)], pools={1: (3, 2), 2: (3, 2), 3: (2, 2)},
                         dense=(9, 256), heads=(2, 4, 10))



def detect_face(imgs, minsize, pnet, rnet, onet, threshold, factor, device):
    model_dtype = next(pnet.parameters()).dtype
    imgs = imgs.permute(0, 3, 1, 2).type(model_dtype)

    batch_size = len(imgs)
    h, w = imgs.shape[2:4]
    m = 12.0 / minsize
    minl = min(h, w)
    minl = minl * m

    # Create scale pyramid
    scale_i = m
    scales = []
    while minl >= 12:
        scales.append(scale_i)
        scale_i = scale_i * factor
        minl = minl * factor

    # First stage
    boxes = []
    image_inds = []

    scale_picks = []

    offset = 0
    for scale in scales:
        im_data = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
        im_data = (im_data - 127.5) * 0.0078125
        reg, probs = pnet(im_data)
    
        boxes_scale, image_inds_scale = generateBoundingBox(reg, probs[:, 1], scale, threshold[0])
        boxes.append(boxes_scale)
        image_inds.append(image_inds_scale)

        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
        scale_picks.append(pick + offset)
        offset += boxes_scale.shape[0]

    boxes = torch.cat(boxes, dim=0)
    image_inds = torch.cat(image_inds, dim=0)

    scale_picks = torch.cat(scale_picks, dim=0)

    # NMS within each scale + image
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]


    # NMS within each image
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]

    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    qq1 = boxes[:, 0] + boxes[:, 5] * regw
    qq2 = boxes[:, 1] + boxes[:, 6] * regh
    qq3 = boxes[:, 2] + boxes[:, 7] * regw
    qq4 = boxes[:, 3] + boxes[:, 8] * regh
    boxes = torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0)
    boxes = rerec(boxes)
    y, ey, x, ex = pad(boxes, w, h)
    
    # Second stage
    if len(boxes) > 0:
        im_data = candidate_crops(imgs, image_inds, (y, ey, x, ex), 24)

        # This is equivalent to out = rnet(im_data) to avoid GPU out of memory.
        out = fixed_batch_process(im_data, rnet)

        out0 = out[0].permute(1, 0)
        out1 = out[1].permute(1, 0)
        score = out1[1, :]
        ipass = score > threshold[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)

        # NMS within each image
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = bbreg(boxes, mv)
        boxes = rerec(boxes)

    # Third stage
    points = torch.zeros(0, 5, 2, device=device)
    if len(boxes) > 0:
        y, ey, x, ex = pad(boxes, w, h)
        im_data = candidate_crops(imgs, image_inds, (y, ey, x, ex), 48)

        # This is equivalent to out = onet(im_data) to avoid GPU out of memory.
        out = fixed_batch_process(im_data, onet)

        out0 = out[0].permute(1, 0)
        out1 = out[1].permute(1, 0)
        out2 = out[2].permute(1, 0)
        score = out2[1, :]
        points = out1
        ipass = score > threshold[2]
        points = points[:, ipass]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)

        w_i = boxes[:, 2] - boxes[:, 0] + 1
        h_i = boxes[:, 3] - boxes[:, 1] + 1
        points_x = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
        points_y = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((points_x, points_y)).permute(2, 1, 0)
        boxes = bbreg(boxes, mv)

        # NMS within each image using "Min" strategy
        # pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, 'Min')
        boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]

    boxes = boxes.cpu().numpy()
    points = points.cpu().numpy()

    image_inds = image_inds.cpu()

    batch_boxes = []
    batch_points = []
    for b_i in range(batch_size):
        b_i_inds = np.where(image_inds == b_i)
        batch_boxes.append(boxes[b_i_inds].copy())
        batch_points.append(points[b_i_inds].copy())

    batch_boxes, batch_points = np.array(batch_boxes, dtype=object), np.array(batch_points, dtype=object)

    return batch_boxes, batch_points


def bbreg(boundingbox, reg):
    if reg.shape[1] == 1:
        reg = torch.reshape(reg, (reg.shape[2], reg.shape[3]))

    w = boundingbox[:, 2] - boundingbox[:, 0] + 1
    h = boundingbox[:, 3] - boundingbox[:, 1] + 1
    b1 = boundingbox[:, 0] + reg[:, 0] * w
    b2 = boundingbox[:, 1] + reg[:, 1] * h
    b3 = boundingbox[:, 2] + reg[:, 2] * w
    b4 = boundingbox[:, 3] + reg[:, 3] * h
    boundingbox[:, :4] = torch.stack([b1, b2, b3, b4]).permute(1, 0)

    return boundingbox



def generateBoundingBox(reg, probs, scale, thresh):
    stride = 2
    cellsize = 12

    reg = reg.permute(1, 0, 2, 3)

    mask = probs >= thresh
    mask_inds = mask.nonzero()
    image_inds = mask_inds[:, 0]
    score = probs[mask]
    reg = reg[:, mask].permute(1, 0)
    bb = mask_inds[:, 1:].type(reg.dtype).flip(1)
    q1 = ((stride * bb + 1) / scale).floor()
    q2 = ((stride * bb + cellsize - 1 + 1) / scale).floor()
    boundingbox = torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1)
    return boundingbox, image_inds



def nms_numpy(boxes, scores, threshold, method):
    if boxes.size == 0:
        return np.empty((0, 3))

    x1 = boxes[:, 0].copy()
    y1 = boxes[:, 1].copy()
    x2 = boxes[:, 2].copy()
    y2 = boxes[:, 3].copy()
    s = scores
    area = (x2 - x1 + 1) * (y2 - y1 + 1)

    I = np.argsort(s)
    pick = np.zeros_like(s, dtype=np.int16)
    counter = 0
    while I.size > 0:
        i = I[-1]
        pick[counter] = i
        counter += 1
        idx = I[0:-1]

        xx1 = np.maximum(x1[i], x1[idx]).copy()
        yy1 = np.maximum(y1[i], y1[idx]).copy()
        xx2 = np.minimum(x2[i], x2[idx]).copy()
        yy2 = np.minimum(y2[i], y2[idx]).copy()

        w = np.maximum(0.0, xx2 - xx1 + 1).copy()
        h = np.maximum(0.0, yy2 - yy1 + 1).copy()

        inter = w * h
        if method == 'Min':
            o = inter / np.minimum(area[i], area[idx])
        else:
            o = inter / (area[i] + area[idx] - inter)
        I = I[np.where(o <= threshold)]

    pick = pick[:counter].copy()
    return pick



def batched_nms_numpy(boxes, scores, idxs, threshold, method):
    device = boxes.device
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    # strategy: in order to perform NMS independently per class.
    # we add an offset to all the boxes. The offset is dependent
    # only on the class idx, and is large enough so that boxes
    # from different classes do not overlap
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    boxes_for_nms = boxes + offsets[:, None]
    boxes_for_nms = boxes_for_nms.cpu().numpy()
    scores = scores.cpu().numpy()
    keep = nms_numpy(boxes_for_nms, scores, threshold, method)
    return torch.as_tensor(keep, dtype=torch.long, device=device)



def pad(boxes, w, h):
    boxes = boxes.trunc().int().cpu().numpy()
    x = boxes[:, 0]
    y = boxes[:, 1]
    ex = boxes[:, 2]
    ey = boxes[:, 3]

    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h

    return y, ey, x, ex



def rerec(bboxA):
    h = bboxA[:, 3] - bboxA[:, 1]
    w = bboxA[:, 2] - bboxA[:, 0]
    
    l = torch.max(w, h)
    bboxA[:, 0] = bboxA[:, 0] + w * 0.5 - l * 0.5
    bboxA[:, 1] = bboxA[:, 1] + h * 0.5 - l * 0.5
    bboxA[:, 2:4] = bboxA[:, :2] + l.repeat(2, 1).permute(1, 0)

    return bboxA



def imresample(img, sz):
    im_data = interpolate(img, size=sz, mode="area")
    return im_data


class MTCNN(nn.Module):
    """Detect faces in one RGB uint8 image (H, W, 3): boxes (N, 5) with score, landmarks (N, 5, 2)."""

    def __init__(self, min_face_size=20, thresholds=(0.6, 0.7, 0.7), factor=0.709):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, name in ((self.pnet, "mtcnn-pnet"), (self.rnet, "mtcnn-rnet"), (self.onet, "mtcnn-onet")):
            net.load_state_dict(torch.load(artifact_path(name), map_location="cpu", weights_only=True))
        self.min_face_size, self.thresholds, self.factor = min_face_size, list(thresholds), factor
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def detect(self, image: np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"MTCNN takes an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        if min(image.shape[:2]) < self.min_face_size:  # no pyramid level fits: no face can be there
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        device = next(self.parameters()).device
        boxes, points = detect_face(
            torch.from_numpy(np.array(image)).to(device)[None],
            self.min_face_size, self.pnet, self.rnet, self.onet, self.thresholds, self.factor, device,
        )
        return np.asarray(boxes[0], dtype=np.float32).reshape(-1, 5), np.asarray(points[0], dtype=np.float32).reshape(-1, 5, 2)
