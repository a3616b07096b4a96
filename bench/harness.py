"""Run cases x providers: build, check against FP32, time, and report (JSON, CSV, markdown, plots)."""

from __future__ import annotations

import csv
import json
import pathlib

import torch

from lowp_ops import quant
from lowp_ops._validate import fp8_supported

from ._common import bench_ms, copy_bandwidth_tbps, header, machine
from .cases import OPS, SHAPES, Problem, smoke_shape
from .providers import PROVIDERS


def check(problem: Problem, provider, out) -> tuple[bool, str]:
    """The provider's output against the FP32 reference: exact for int8_mm, SQNR above its bar otherwise (the
    provider's, lowered to what the op's number format allows)."""
    out = out.float() if out.is_floating_point() else out
    if problem.op == "int8_mm":
        ok = torch.equal(out.to(torch.int32), problem.reference)
        return ok, "exact" if ok else "MISMATCH"
    sqnr = quant.sqnr_db(problem.reference.float(), out.reshape(problem.reference.shape))
    return sqnr >= min(provider.min_sqnr_db, OPS[problem.op].max_bar_db), f"{sqnr:.1f} dB"


def ceilings(device) -> dict:
    """What the card does in this run: copy bandwidth and the best cuBLAS INT8 / FP16 rates at 8192³, and FP8's
    (torch._scaled_mm, per-tensor scales, fast accumulation, bf16 out) where the card has FP8 (sm_89+; else None)."""
    a8 = torch.randint(-128, 128, (8192, 8192), dtype=torch.int8, device=device)
    a16 = torch.randn(8192, 8192, device=device).half()
    ops = 2 * 8192**3
    fp8 = None
    if fp8_supported(torch.device(device)):
        e4m3, one = a16.to(torch.float8_e4m3fn), torch.ones((), device=device)
        fp8 = ops / bench_ms(lambda: torch._scaled_mm(e4m3, e4m3.T, scale_a=one, scale_b=one,
                                                      out_dtype=torch.bfloat16, use_fast_accum=True)) / 1e9
    return {"bandwidth": copy_bandwidth_tbps(device),
            "int8": ops / bench_ms(lambda: torch._int_mm(a8, a8.T)) / 1e9,
            "fp16": ops / bench_ms(lambda: a16 @ a16) / 1e9, "fp8": fp8}


def run(ops, shape_sets, providers, *, smoke: bool, progress: bool = True) -> tuple[dict, list[dict]]:
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    info = machine()
    info["ceilings"] = None if smoke else ceilings(device)
    jobs = [(op, smoke_shape(shape, OPS[op].smoke_multiple) if smoke else shape) for op in ops for s in shape_sets
            if s in OPS[op].shape_sets for shape in SHAPES[s]]
    jobs = [(OPS[op], shape) for op, shape in dict.fromkeys(jobs)]  # smoke shapes coincide: check each once
    if progress:
        try:
            from tqdm.auto import tqdm

            jobs = tqdm(jobs, desc="cases", unit="case")
        except ImportError:
            pass
    rows = []
    for op, shape in jobs:
        problem = op.make(shape, device)
        for name in providers:
            provider = PROVIDERS[name]
            if op.name not in provider.ops:
                continue
            row = {"op": op.name, "shape": list(shape), "provider": name}
            fn = provider.build(problem)
            if isinstance(fn, str):
                row.update(status="skipped", note=fn)
                rows.append(row)
                continue
            ok, metric = check(problem, provider, fn())
            row.update(status="ok" if ok else "WRONG", check=metric)
            if ok and not smoke:
                ms = bench_ms(fn)
                row["ms"] = ms
                if problem.flops:
                    row["tflops"] = problem.flops / ms / 1e9
                row["tbps"] = problem.bytes / ms / 1e9
                peak = info["ceilings"].get(op.kind)
                if peak:
                    rate = row["tbps"] if op.kind == "bandwidth" else row.get("tflops", 0)
                    row["pct_of_peak"] = 100 * rate / peak
            rows.append(row)
        del problem
    return info, rows


def speedups(rows: list[dict]) -> None:
    """Add the speedup of lowp (and of its variants, lowp_*) over every other provider that ran the same case."""
    by_case = {}
    for r in rows:
        by_case.setdefault((r["op"], tuple(r["shape"])), {})[r["provider"]] = r
    for case in by_case.values():
        for name, lowp in case.items():
            if (name == "lowp" or name.startswith("lowp_")) and "ms" in lowp:
                lowp["speedup_vs"] = {other: r["ms"] / lowp["ms"] for other, r in case.items()
                                      if other != name and "ms" in r}


def markdown(info: dict, rows: list[dict]) -> str:
    lines = header(info, "lowp benchmarks")
    if info.get("ceilings"):
        c = info["ceilings"]
        fp8 = f", FP8 torch._scaled_mm {c['fp8']:.0f} TFLOPS" if c.get("fp8") else ""
        lines += [f"Measured in this run: copy {c['bandwidth']:.2f} TB/s, torch._int_mm {c['int8']:.0f} TOPS, "
                  f"FP16 a @ b {c['fp16']:.0f} TFLOPS{fp8} (8192³) — '% peak' is against these.", ""]
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        providers = list(dict.fromkeys(r["provider"] for r in op_rows if r["status"] == "ok"))
        unit = "TB/s" if OPS[op].kind == "bandwidth" else "TFLOPS/TOPS"
        lines += [f"## {op} ({unit}; lowp speedup vs each)", "",
                  "| shape | " + " | ".join(providers) + " | lowp % peak | " +
                  " | ".join(f"vs {p}" for p in providers if p != "lowp") + " |",
                  "|---|" + "---:|" * (2 * len(providers))]
        for shape in dict.fromkeys(tuple(r["shape"]) for r in op_rows):
            cells = {r["provider"]: r for r in op_rows if tuple(r["shape"]) == shape}

            def rate(r, op=op):
                if r is None or r["status"] != "ok":
                    return "-"
                if "ms" not in r:
                    return f"ok ({r['check']})"
                return f"{r.get('tflops', r['tbps']):.1f}" if OPS[op].kind != "bandwidth" else f"{r['tbps']:.2f}"

            lowp = cells.get("lowp", {})
            sp = lowp.get("speedup_vs", {})
            peak = f"{lowp['pct_of_peak']:.0f}" if "pct_of_peak" in lowp else "-"
            versus = " | ".join(f"{sp[p]:.2f}x" if p in sp else "-" for p in providers if p != "lowp")
            lines.append(f"| {', '.join(map(str, shape))} | " + " | ".join(rate(cells.get(p)) for p in providers) +
                         f" | {peak} | {versus} |")
        skipped = {(r["provider"], r["note"]) for r in op_rows if r["status"] == "skipped"}
        if skipped:
            lines += ["", "Not run: " + "; ".join(f"{p} ({n})" for p, n in sorted(skipped))]
        wrong = [r for r in op_rows if r["status"] == "WRONG"]
        if wrong:
            lines += ["", "**Failed the correctness check (not timed):** " +
                      "; ".join(f"{r['provider']} at {r['shape']}: {r['check']}" for r in wrong)]
        lines.append("")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], info: dict, out: pathlib.Path, stem: str) -> list[str]:
    """Speedup vs M on the LLM shapes, and a roofline with lowp's points. Returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    llm = [r for r in rows if r["provider"] == "lowp" and "speedup_vs" in r and len(r["shape"]) == 3
           and r["shape"][1:] == [11008, 4096]]
    if llm:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for op in dict.fromkeys(r["op"] for r in llm):
            pts = sorted((r["shape"][0], r["speedup_vs"]) for r in llm if r["op"] == op)
            for base in dict.fromkeys(b for _, sp in pts for b in sp):
                xs = [m for m, sp in pts if base in sp]
                ax.plot(xs, [sp[base] for _, sp in pts if base in sp], marker="o", label=f"{op} vs {base}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="M (tokens), N=11008, K=4096", ylabel="lowp speedup", title=info["card"])
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{stem}-speedup.png", dpi=120)
        written.append(f"{stem}-speedup.png")
    timed = [r for r in rows if r["provider"] == "lowp" and "tflops" in r]
    if timed and info.get("ceilings"):
        c = info["ceilings"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        intensity = [1, 1e4]
        top = max(v for k, v in c.items() if k != "bandwidth" and v)
        ax.plot(intensity, [min(i * c["bandwidth"], top) for i in intensity], "k--", lw=0.8, label="copy BW")
        ax.axhline(c["int8"], color="tab:red", lw=0.8, label=f"cuBLAS int8 {c['int8']:.0f}")
        ax.axhline(c["fp16"], color="tab:blue", lw=0.8, label=f"cuBLAS fp16 {c['fp16']:.0f}")
        if c.get("fp8"):
            ax.axhline(c["fp8"], color="tab:green", lw=0.8, label=f"cuBLAS fp8 {c['fp8']:.0f}")
        for op in dict.fromkeys(r["op"] for r in timed):
            pts = [r for r in timed if r["op"] == op]
            ax.scatter([r["tflops"] / r["tbps"] for r in pts], [r["tflops"] for r in pts], s=14, label=op)
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)", ylabel="TFLOPS / TOPS",
               title=f"roofline, {info['card']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{stem}-roofline.png", dpi=120)
        written.append(f"{stem}-roofline.png")
    return written


def save(info: dict, rows: list[dict], report: str, out_dir: str, name: str) -> list[pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{info['card'].split(' (')[0].replace(' ', '_')}-{info['date']}"
    (out / f"{stem}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=str))
    fields = ["op", "shape", "provider", "status", "check", "ms", "tflops", "tbps", "pct_of_peak", "note"]
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "shape": "x".join(map(str, r["shape"]))} for r in rows)
    (out / f"{stem}.md").write_text(report)
    return [out / f"{stem}.{ext}" for ext in ("json", "csv", "md")] + [out / p for p in plots(rows, info, out, stem)]
