"""One fold of the quick start in plain PyTorch (no Ray): FERSNet accuracy, Table V, a contact sheet.

    python jobs/probe_demo.py                                        # the tiny preset on 16 demo subjects
    python jobs/probe_demo.py --subjects 12 --epochs 60 --set model.widths=8,16,32,64 \
        --set train.lambda_rec=1.0 --set train.lambda_cyc=0.5 --sheet /tmp/sheet.png

Subjects s with s % folds == fold are held out. Trains FERSNet with the `tiny` preset (--set takes
model.KEY=VALUE or train.KEY=VALUE, as `fersnet train --set` does), then the Table V recogniser on the
training faces, then scores the held-out subjects' syntheses. For choosing demo and preset settings
without the pipeline's fixed costs; `fersnet run` is the real thing.
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from fersnet_ray.prepare import demo
from fersnet_ray.synth.quality import synthesize_all_targets
from fersnet_ray.synth.recognizer import accuracy_against, train_recognizer
from fersnet_ray.synth.sheet import contact_sheet
from fersnet_ray.train.config import make_experiment, with_overrides
from fersnet_ray.train.data import FaceSet, TargetSampler
from fersnet_ray.train.loop import FoldState, evaluate, train_epoch

p = argparse.ArgumentParser()
p.add_argument("--subjects", type=int, default=16)
p.add_argument("--epochs", type=int, default=30)
p.add_argument("--rec-epochs", type=int, default=30)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--load", type=int, default=36)
p.add_argument("--crop", type=int, default=32)
p.add_argument("--aligned", type=int, default=110)
p.add_argument("--fold", type=int, default=0)
p.add_argument("--folds", type=int, default=2)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--set", action="append", default=[], help="model.KEY=VALUE or train.KEY=VALUE")
p.add_argument("--sheet", default="")
p.add_argument("--trainbn", action="store_true")
p.add_argument("--save", default="")
a = p.parse_args()
torch.set_num_threads(a.threads)


def faces(subjects):
    imgs, labs, subs = [], [], []
    for s in subjects:
        for lab in range(7):
            for f in range(3):
                im = np.asarray(demo.render_face(0, s, lab, f, a.aligned), dtype=np.uint8)
                imgs.append(torch.from_numpy(im.copy())[None])
                labs.append(lab)
                subs.append(demo.subject_name(s))
    x = torch.stack(imgs).float()
    x = (
        F.interpolate(x, size=(a.load, a.load), mode="bilinear", antialias=True, align_corners=False)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    return FaceSet(x, torch.tensor(labs), np.array(subs), [str(i) for i in range(len(labs))])


test_s = [s for s in range(a.subjects) if s % a.folds == a.fold]
train_s = [s for s in range(a.subjects) if s % a.folds != a.fold]
tr, te = faces(train_s), faces(test_s)
exp = make_experiment("tiny", epochs=a.epochs, batch_size=a.batch, load_size=a.load, crop_size=a.crop)
exp = with_overrides(exp, [f"model.image_size={a.crop}", *a.set])
state = FoldState.create(exp, "cpu")
sampler = TargetSampler(tr.labels, tr.subjects, 0)
t0 = time.time()
for e in range(a.epochs):
    m = train_epoch(state, tr, sampler)
    if (e + 1) % 5 == 0 or e + 1 == a.epochs:
        acc = evaluate(state.model, te, a.crop, amp=True)["accuracy"]
        print(
            f"ep {e + 1} acc {acc:.3f} cls {m.get('cls', 0):.3f} rec {m.get('rec', 0):.3f} gan {m.get('gan', 0):.3f} {m['images_per_s']:.0f} img/s t={time.time() - t0:.0f}",
            flush=True,
        )
t1 = time.time()
rec = train_recognizer(tr, 7, a.crop, epochs=a.rec_epochs, seed=0)
real = accuracy_against(rec, te.images, te.labels, a.crop)
if a.save:
    torch.save(state.model.state_dict(), a.save)
imgs, src, tgt = synthesize_all_targets(state.model.eval(), te, exp, torch.device("cpu"))
tv_eval = accuracy_against(rec, imgs, torch.as_tensor(tgt), a.crop)
if a.trainbn:

    class W:
        def __init__(s, m):
            s.m = m

        def synthesize(s, x, t):
            s.m.train()
            return s.m.synthesize(x, t)

    imgs, src, tgt = synthesize_all_targets(W(state.model), te, exp, torch.device("cpu"), batch_size=1024)
print("tableV eval-mode", tv_eval)
tv = accuracy_against(rec, imgs, torch.as_tensor(tgt), a.crop)
print(
    f"RESULT train {t1 - t0:.0f}s rec {time.time() - t1:.0f}s fersnet_acc {acc:.3f} rec_real {real:.3f} tableV {tv:.3f}",
    flush=True,
)
if a.sheet:
    labels = te.labels.numpy()
    rows = []
    for c in range(7):
        i = int(np.flatnonzero(labels == c)[0])
        cells = {c: te.images[i].numpy()}
        for k in np.flatnonzero(src == i):
            cells[int(tgt[k])] = imgs[k].numpy()
        rows.append({"source_label": c, "images": cells})
    contact_sheet(rows, list(demo.CLASSES)).save(a.sheet)
