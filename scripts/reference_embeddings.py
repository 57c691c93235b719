"""Compute reference embeddings with the *original* runtimes (dlib, TensorFlow/Keras), once.

Run in a separate environment that has dlib-bin, tensorflow-cpu and tf-keras (they are not
project dependencies); the output is committed as tests/data/reference_embeddings.json and the
equivalence tests compare the project's PyTorch ports against it. Inputs are centre crops of real
LFW photos, made by array slicing only, so both sides see identical pixels.

    python scripts/reference_embeddings.py --lfw ../shared/data/lfw --cache ~/.cache/tipim/models
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES = [
    "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "Abel_Pacheco/Abel_Pacheco_0001.jpg",
    "Adam_Sandler/Adam_Sandler_0002.jpg",
    "Serena_Williams/Serena_Williams_0001.jpg",
    "Colin_Powell/Colin_Powell_0001.jpg",
    "Jennifer_Lopez/Jennifer_Lopez_0001.jpg",
]


def centre_crop(path: Path, size: int) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"))
    top = (img.shape[0] - size) // 2
    left = (img.shape[1] - size) // 2
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def dlib_reference(lfw: Path, dat: Path) -> list[list[float]]:
    import dlib

    rec = dlib.face_recognition_model_v1(str(dat))
    return [list(rec.compute_face_descriptor(centre_crop(lfw / name, 150))) for name in IMAGES]


def facenet_reference(lfw: Path, h5: Path) -> list[list[float]]:
    import h5py
    import tensorflow as tf
    import tf_keras

    class ScaleSum(tf_keras.layers.Layer):
        def __init__(self, scale=1.0, **kw):
            super().__init__(**kw)
            self.scale = scale

        def call(self, inputs):
            return inputs[0] + inputs[1] * self.scale

    with h5py.File(h5, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            layer["class_name"] = "ScaleSum"
            layer["config"] = {"name": layer["name"], "scale": layer["config"]["arguments"]["scale"]}
    model = tf_keras.Model.from_config(cfg["config"], custom_objects={"ScaleSum": ScaleSum})
    model.load_weights(str(h5), by_name=True)
    x = np.stack([centre_crop(lfw / name, 160) for name in IMAGES]).astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(x[0].size))
    return model.predict((x - mean) / std, verbose=0).tolist()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", default="../shared/data/lfw")
    ap.add_argument("--cache", default=str(Path.home() / ".cache/tipim/models"))
    ap.add_argument("--out", default="tests/data/reference_embeddings.json")
    a = ap.parse_args()
    lfw, cache = Path(a.lfw), Path(a.cache)
    out = {
        "images": IMAGES,
        "crop": {"dlib-resnet": 150, "facenet": 160},
        "runtime": {},
        "dlib-resnet": dlib_reference(lfw, cache / "dlib-resnet/dlib_face_recognition_resnet_model_v1.dat"),
        "facenet": facenet_reference(lfw, cache / "facenet/facenet_keras.h5"),
    }
    import dlib
    import tensorflow as tf

    out["runtime"] = {"dlib": dlib.__version__, "tensorflow": tf.__version__}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)
