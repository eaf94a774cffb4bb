"""fastnet CUDA against PyTorch CUDA on the same GPU (issue 4's figures).

    python benchmarks/cuda_bench.py [--repeat 20] [--quick]

- SGEMM at 1024^3 and 4096^3: fastnet's GEMM kernel against torch.matmul with TF32 off
  (both plain FP32), as GFLOP/s and the ratio.
- Whole training steps at batch 128 (MLP 784-256-256-10, LeNet-5, VGG-small; forward,
  cross-entropy, backward, SGD-momentum update) with the inputs already on the GPU, the
  loss not read: ms per step and the ratio.
- Launch overhead: the time of a kernel launch on a one-element array, from Python
  (median over many launches, synchronised at the end).

Every timed call ends with a device synchronisation; medians of ``--repeat`` runs after
warm-up (JIT compilation is not throughput). ``--quick`` uses tiny shapes and leaves
PyTorch out: a smoke test of the script on a GPU.
"""
import argparse
import statistics
import sys
import time

import numpy as np


def _median_ms(fn, sync, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def gemm_rows(sizes, repeat, torch):
    import fastnet.cuda as fc
    from fastnet.kernels.cuda import gemm

    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        da, db, dc = fc.to_device(a), fc.to_device(b), fc.empty((n, n), np.float32)
        flat = dc.reshape(n * n)
        ms = _median_ms(lambda: gemm.gemm(flat, da, db), fc.synchronize, repeat)
        got = dc.copy_to_host()
        err = float(np.abs(got - a @ b).max() / np.abs(a @ b).max())
        row = {"case": f"sgemm {n}^3", "fastnet_ms": ms, "fastnet_gflops": 2 * n ** 3 / ms / 1e6,
               "rel_err": err}
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = False
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            tms = _median_ms(lambda: torch.matmul(ta, tb), torch.cuda.synchronize, repeat)
            row.update(torch_ms=tms, torch_gflops=2 * n ** 3 / tms / 1e6, ratio=tms / ms)
        rows.append(row)
    return rows


def step_rows(quick, repeat, torch):
    import fastnet.cuda as fc
    from fastnet.bench import cases, fastnet_impl
    from fastnet.losses import CrossEntropyLoss
    from fastnet.optim import SGD

    n = 8 if quick else 128
    models = {
        "mlp": (cases._mlp(64 if quick else 784), (n, 1, 8, 8) if quick else (n, 1, 28, 28)),
        "lenet5": (cases._lenet(16 if quick else 400), (n, 1, 12, 12) if quick else (n, 1, 28, 28)),
        "vgg-small": (cases._vgg(4, 8, 8 * 2 * 2, 16) if quick else cases._vgg(32, 64, 64 * 8 * 8, 256),
                      (n, 3, 8, 8) if quick else (n, 3, 32, 32)),
    }
    rows = []
    for name, (spec, x_shape) in models.items():
        rng = np.random.default_rng(0)
        params = cases.init_params(spec, rng)
        x = rng.standard_normal(x_shape, dtype=np.float32)
        labels = rng.integers(0, 10, x_shape[0])
        dx, dy = fc.to_device(x), fc.to_device(labels)
        net = fastnet_impl.build(spec, params).to("cuda")
        opt = SGD(net.parameters(), lr=cases.SGD_LR, momentum=cases.MOMENTUM)
        loss_fn = CrossEntropyLoss()

        def fastnet_step():
            opt.zero_grad()
            loss_fn(net(dx), dy)  # the loss stays on the GPU
            net.backward(loss_fn.backward(), input_grad=False)
            opt.step()

        fastnet_step()  # the first step allocates the pool's blocks
        before = fc.memory_stats()["device_allocations"]
        ms = _median_ms(fastnet_step, fc.synchronize, repeat)
        row = {"case": f"train {name} batch {n}", "fastnet_ms": ms,
               "device_allocations_in_timed_steps": fc.memory_stats()["device_allocations"] - before}
        if torch is not None:
            from fastnet.bench import torch_twins

            model, _ = torch_twins.build(spec, params)
            model = model.cuda()
            xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(labels).cuda()
            opt = torch.optim.SGD(model.parameters(), lr=cases.SGD_LR, momentum=cases.MOMENTUM)

            def step():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt), yt).backward()
                opt.step()

            tms = _median_ms(step, torch.cuda.synchronize, repeat)
            row.update(torch_ms=tms, ratio=tms / ms)
        rows.append(row)
    return rows


def launch_row(repeat):
    import fastnet.cuda as fc
    from fastnet.kernels import kernel

    x = fc.to_device(np.ones(1, np.float32))
    out = fc.empty(1, np.float32)
    relu = kernel("relu_forward", "cuda")
    n = 10 if repeat < 20 else 1000
    relu(out, x)
    fc.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        relu(out, x)
    fc.synchronize()
    return {"case": "launch overhead (relu, 1 element)", "fastnet_us": 1e6 * (time.perf_counter() - t0) / n}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    import fastnet

    if not fastnet.cuda.is_available():
        print(f"no CUDA: {fastnet.cuda.unavailable_reason()}", file=sys.stderr)
        return 2
    torch = None if args.quick else _torch_cuda()
    if torch is not None:
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    rows = gemm_rows([64] if args.quick else [1024, 4096], args.repeat, torch)
    rows += step_rows(args.quick, args.repeat, torch)
    rows.append(launch_row(args.repeat))
    for r in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
