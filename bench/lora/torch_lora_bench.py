#!/usr/bin/env python3
"""PyTorch reference timings for bench/lora (lora_bench runs this as a subprocess).

The same LoRA apply as loraflip's lf_lora_apply, y += scale * B(A x) per row with the adapter
chosen for that row, done the two ways PyTorch code usually does it, and reported as the better:
  grouped: rows grouped by adapter (index_select / index_add_ for per-row choices, slices for
           segments), two matmuls per adapter;
  bmm:     A and B gathered per row ([n, r, h] and [n, h, r]) and two batched matmuls (decode
           only: for prefill the per-row gather would be n_rows copies of each adapter).

Usage: torch_lora_bench.py --threads N [--quick] SHAPE...
  SHAPE is name:dtype:rows:h:rank:adapters:mode, mode 'rows' (random adapter per row, seed as
  given) or 'segments' (equal contiguous segments).
Prints one line per shape: 'name dtype ms_best_method method'. Exits 3 (with a note on stderr)
when torch cannot be imported, so the caller can say why the rows are missing.
"""
import sys
import time


def main(argv):
    try:
        import torch
    except Exception as exc:  # any import failure means no torch rows, not a crash
        print(f"torch not importable: {exc}", file=sys.stderr)
        return 3
    threads = 1
    quick = False
    shapes = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--threads":
            threads = int(args.pop(0))
        elif a == "--quick":
            quick = True
        else:
            shapes.append(a)
    torch.set_num_threads(threads)
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    gen = torch.Generator().manual_seed(42)
    for spec in shapes:
        name, dt, rows, h, rank, n_ad, mode = spec.split(":")
        rows, h, rank, n_ad = int(rows), int(h), int(rank), int(n_ad)
        dtype = dtypes[dt]

        def rand(*shape, amp=1.0):
            return ((torch.rand(*shape, generator=gen) * 2 - 1) * amp).to(dtype)

        x = rand(rows, h)
        y0 = rand(rows, h)
        a = [rand(rank, h, amp=h ** -0.5) for _ in range(n_ad)]
        b = [rand(h, rank, amp=rank ** -0.5) for _ in range(n_ad)]
        scale = 2.0  # alpha = 2 * rank, standard scaling, as lora_bench
        if mode == "rows":
            choice = torch.randint(0, n_ad, (rows,), generator=gen)
        else:
            choice = torch.arange(rows) * n_ad // rows
        groups = [torch.nonzero(choice == i).flatten() for i in range(n_ad)]
        bounds = [rows * i // n_ad for i in range(n_ad + 1)]
        y = y0.clone()

        def grouped():
            if mode == "segments":
                for i in range(n_ad):
                    s, e = bounds[i], bounds[i + 1]
                    y[s:e].add_((x[s:e] @ a[i].t()) @ b[i].t(), alpha=scale)
            else:
                for i, idx in enumerate(groups):
                    if idx.numel():
                        xi = x.index_select(0, idx)
                        y.index_add_(0, idx, (xi @ a[i].t()) @ b[i].t(), alpha=scale)

        a_stack = torch.stack(a)  # [n_ad, r, h]
        b_stack = torch.stack(b)  # [n_ad, h, r]

        def bmm():
            ar = a_stack.index_select(0, choice)  # [rows, r, h]
            br = b_stack.index_select(0, choice)  # [rows, h, r]
            v = torch.bmm(ar, x.unsqueeze(2))  # [rows, r, 1]
            y.add_(torch.bmm(br, v).squeeze(2), alpha=scale)

        methods = {"grouped": grouped}
        if mode == "rows":
            methods["bmm"] = bmm
        best_name, best_t = None, float("inf")
        for mname, fn in methods.items():
            fn()  # warm up (allocator, oneDNN primitive caches)
            times = []
            budget = 0.2 if quick else 1.0
            start = time.perf_counter()
            while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 2000):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            times.sort()
            med = times[len(times) // 2]  # median, as lora_bench
            if med < best_t:
                best_name, best_t = mname, med
        print(f"{name} {dt} {best_t * 1e3:.4f} {best_name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
