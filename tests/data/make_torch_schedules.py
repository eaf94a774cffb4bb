"""Writes torch_schedules.npz, the PyTorch side of tests/test_clip_schedules.py:

- torch.nn.utils.clip_grad_norm_ (norm types 2, 1, inf, 3, 0.5; clipping and not; NaN and
  inf gradients) and clip_grad_value_ on float32 and float64 gradients: the inputs, the
  returned total norm and the gradients after;
- the lr sequences of OneCycleLR (cos, linear, three_phase), of
  SequentialLR([LinearLR, CosineAnnealingLR]) (fastnet's WarmupCosine convention) and of
  ReduceLROnPlateau on fixed metric sequences (min / max, rel / abs, cooldown, min_lr);
- a tiny training run (nn.Linear, SGD with momentum, cross-entropy, batches in order):
  OneCycleLR stepped after every step with clip_grad_norm_ before it, and ReduceLROnPlateau
  stepped with the validation loss after every epoch, in float32 and float64: the
  weights after each epoch.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_schedules.py
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from schedule_cases import (CLIP_SHAPES, METRICS, NORM_TYPES, ONECYCLE, PLATEAU,  # noqa: E402
                            WARMUP)  # shared with the test

torch.set_num_threads(1)


def clip_cases(out):
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        rng = np.random.default_rng(3)
        grads = [(rng.standard_normal(s) * 2).astype(dt) for s in CLIP_SHAPES]
        for p in NORM_TYPES:
            for max_norm in (0.7, 1e3):
                tag = f"norm/{name}/{p}/{max_norm}"
                ts = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype))
                      for g in grads]
                for t, g in zip(ts, grads):
                    t.grad = torch.from_numpy(g.copy())
                total = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type=p)
                out[f"{tag}/total"] = np.array(total.item())
                for i, t in enumerate(ts):
                    out[f"{tag}/grad{i}"] = t.grad.numpy()
        for i, g in enumerate(grads):
            out[f"grads/{name}/{i}"] = g
        # non-finite gradients: NaN (every grad NaN after) and inf
        for special in ("nan", "inf"):
            g = grads[0].copy()
            g[1, 2] = float(special)
            t = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype))
            t.grad = torch.from_numpy(g.copy())
            total = torch.nn.utils.clip_grad_norm_([t], 1.0)
            out[f"special/{name}/{special}/input"] = g
            out[f"special/{name}/{special}/total"] = np.array(total.item())
            out[f"special/{name}/{special}/grad"] = t.grad.numpy()
        ts = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype))
              for g in grads]
        for t, g in zip(ts, grads):
            t.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_value_(ts, 0.8)
        for i, t in enumerate(ts):
            out[f"value/{name}/{i}"] = t.grad.numpy()


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def schedule_cases(out):
    for i, cfg in enumerate(ONECYCLE):
        opt = _opt()
        s = torch.optim.lr_scheduler.OneCycleLR(opt, cycle_momentum=False, **cfg)
        lrs = []
        for _ in range(cfg["total_steps"]):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        out[f"onecycle/{i}"] = np.array(lrs)
    for i, cfg in enumerate(WARMUP):
        base, w, n = 0.2, cfg["warmup_steps"], cfg["total_steps"]
        opt = _opt(base)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n - w,
                                                            eta_min=cfg["min_lr"])
        if w:
            warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0,
                                                     total_iters=w - 1)
            s = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[w])
        else:
            s = cosine
        lrs = []
        for _ in range(n + 1):  # (PyTorch's cosine rises again after T_max; fastnet's stays)
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        out[f"warmup/{i}"] = np.array(lrs)
    for i, cfg in enumerate(PLATEAU):
        opt = _opt(0.1)
        s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **cfg)
        metrics = METRICS if cfg.get("mode") != "max" else -METRICS
        lrs = []
        for m in metrics:
            s.step(float(m))
            lrs.append(opt.param_groups[0]["lr"])
        out[f"plateau/{i}"] = np.array(lrs)
    out["plateau/metrics"] = METRICS


def training_cases(out):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((24, 5))
    y = rng.integers(0, 3, 24)
    xv = rng.standard_normal((8, 5))
    yv = rng.integers(0, 3, 8)
    w0 = rng.standard_normal((3, 5)) * 0.5
    b0 = rng.standard_normal(3) * 0.5
    out.update({"train/x": x, "train/y": y, "train/xv": xv, "train/yv": yv,
                "train/w0": w0, "train/b0": b0})
    epochs, batch = 3, 6
    for dt, tdt in ((np.float32, torch.float32), (np.float64, torch.float64)):
        name = np.dtype(dt).name
        for kind in ("onecycle", "plateau"):
            lin = torch.nn.Linear(5, 3, dtype=tdt)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w0.astype(dt)))
                lin.bias.copy_(torch.from_numpy(b0.astype(dt)))
            opt = torch.optim.SGD(lin.parameters(), lr=0.5, momentum=0.9)
            if kind == "onecycle":
                sched = torch.optim.lr_scheduler.OneCycleLR(
                    opt, max_lr=2.0, total_steps=epochs * len(x) // batch, cycle_momentum=False)
            else:
                sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
            xt, xvt = torch.from_numpy(x.astype(dt)), torch.from_numpy(xv.astype(dt))
            for e in range(epochs):
                for i in range(0, len(x), batch):
                    opt.zero_grad()
                    loss = F.cross_entropy(lin(xt[i:i + batch]), torch.from_numpy(y[i:i + batch]))
                    loss.backward()
                    if kind == "onecycle":
                        torch.nn.utils.clip_grad_norm_(lin.parameters(), 0.5)
                    opt.step()
                    if kind == "onecycle":
                        sched.step()
                with torch.no_grad():
                    val = F.cross_entropy(lin(xvt), torch.from_numpy(yv)).item()
                if kind == "plateau":
                    sched.step(val)
                out[f"train/{kind}/{name}/{e}/weight"] = lin.weight.detach().numpy().copy()
                out[f"train/{kind}/{name}/{e}/bias"] = lin.bias.detach().numpy().copy()
                out[f"train/{kind}/{name}/{e}/lr"] = np.array(opt.param_groups[0]["lr"])


def main():
    out = {}
    clip_cases(out)
    schedule_cases(out)
    training_cases(out)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_schedules.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(out)} arrays, {os.path.getsize(path)} bytes, torch "
          f"{torch.__version__}")


if __name__ == "__main__":
    main()
