"""FLOP counts of the network that runs, and this machine's peak arithmetic rates: the "FLOP floor" of the benchmarks.

Two independent counts of the same network at the same input (batch included):
- `torch_flops`: torch.utils.flop_counter on the PyTorch module (convolutions and matrix products; a multiply-add
  counts as 2 FLOPs);
- `onnx_flops`: from the exported ONNX graph, its input fixed to the shape, through onnx.shape_inference: MACs of
  every Conv, ConvTranspose, Gemm and MatMul from their shapes, x2. Element-wise ops (BN, ReLU, Add, Resize) are
  left out by both counts; they are memory-bound and a small share of a CNN's arithmetic.
The peak (`peak_rates`) is an upper bound of what the cores can do, so that time >= FLOPs / peak always holds:
cores x (FLOP per cycle of the microarchitecture, MICROARCHITECTURES below, else of the widest instructions the
/proc/cpuinfo flags list) x clock. A measured fp32 GEMM (`gemm_gflops`) is reported beside it: the floor at the rate
a real kernel reaches here. The clock is the highest the machine states
(`stated_clock_ghz`: cpufreq's maximum, turbo included; /proc/cpuinfo "cpu MHz", the nominal clock under a
hypervisor), where it states no maximum the highest boost clock of the parts this CPU can be (a hypervisor hides
the host's turbo), or the one a measured fp32 GEMM implies, whichever is higher. A measured GEMM alone is no peak: BLAS
libraries need not use the widest vectors a core has (MKL takes its AVX2 path on AMD cores), and ONNX Runtime's
own kernels then beat it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

# The peak per core comes first from the microarchitecture (CPUID vendor, family, model: MICROARCHITECTURES), because
# an instruction set says how wide an instruction is, not how wide the units that execute it are: AMD Zen 4 runs
# AVX-512 on 256-bit units (a zmm FMA takes two passes), so it does 32 fp32 FLOP per cycle per core like Zen 2/3,
# not the 64 of a core with two 512-bit FMA units. Only when the CPU is not in the table, or the table cannot be
# this core (a hypervisor's stand-in CPU model: the flags show wider instructions than the row's core has, or a
# measured GEMM beats the row's peak at the stated clock), the widest instructions' best case is taken
# (FP32_PER_CYCLE, INT8_MACS_PER_CYCLE: errs high, so the floor stays a floor). Every figure says which was used.
#
# vendor, family, model ranges (first, last, highest boost clock in GHz of any part in the range, that part), name,
# fp32 FLOP/cycle/core, int8 MAC/cycle/core, how. The boost clock bounds the clock where the machine states no
# maximum (a hypervisor's /proc/cpuinfo gives the nominal clock while the host boosts above it). Sources: AMD's
# Software Optimization Guides for family 17h (Zen, Zen 2), 19h (Zen 3, Zen 4) and 1Ah (Zen 5); Intel's Optimization
# Reference Manual (port tables); Agner Fog's microarchitecture manual; the vendors' product pages (boost clocks).
MICROARCHITECTURES = (
    ("AuthenticAMD", 0x17, ((0x00, 0x2F, 4.35, "Ryzen 7 2700X"),), "AMD Zen / Zen+", 16, 32,
     "2 x 128-bit FMA pipes (a 256-bit AVX2 op is split in two): 2 x 4 fp32 lanes x 2 FLOP; int8 2 x 128-bit "
     "VPMADDUBSW"),
    ("AuthenticAMD", 0x17, ((0x30, 0x3F, 3.9, "EPYC 7F52"), (0x40, 0xFF, 4.7, "Ryzen 9 3950X")), "AMD Zen 2", 32, 64,
     "2 x 256-bit FMA pipes: 2 x 8 fp32 lanes x 2 FLOP; int8 2 x 256-bit VPMADDUBSW"),
    ("AuthenticAMD", 0x19, ((0x00, 0x0F, 4.1, "EPYC 72F3"), (0x20, 0x5F, 5.0, "Ryzen 9 6980HX")), "AMD Zen 3", 32, 64,
     "2 x 256-bit FMA pipes: 2 x 8 fp32 lanes x 2 FLOP; int8 2 x 256-bit VPMADDUBSW"),
    ("AuthenticAMD", 0x19, ((0x10, 0x1F, 4.4, "EPYC 9174F"), (0x60, 0x7F, 5.7, "Ryzen 9 7950X"),
                            (0xA0, 0xAF, 3.1, "EPYC 9754")), "AMD Zen 4", 32, 64,
     "AVX-512 on 2 x 256-bit FMA pipes (a 512-bit op takes two passes): 32 fp32 FLOP; int8 VNNI at 256 bits per "
     "pass: 2 x 32 u8*s8 MACs"),
    ("AuthenticAMD", 0x1A, ((0x00, 0xFF, 5.7, "Ryzen 9 9950X"),), "AMD Zen 5", 64, 128,
     "2 x 512-bit FMA pipes (server and desktop parts): 2 x 16 fp32 lanes x 2 FLOP; int8 2 x 512-bit VPDPBUSD"),
    ("GenuineIntel", 6, tuple((m, m, 5.3, "Core i9-10900K") for m in (0x3C, 0x3F, 0x45, 0x46, 0x47, 0x4E, 0x4F, 0x56,
                                                                   0x5E, 0x8E, 0x9E, 0xA5)),
     "Intel Haswell .. Comet Lake", 32, 64, "2 x 256-bit FMA ports: 2 x 8 fp32 lanes x 2 FLOP; int8 2 x 256-bit "
     "VPMADDUBSW"),
    ("GenuineIntel", 6, tuple((m, m, 4.8, "Core i9-10980XE") for m in (0x55, 0x6A, 0x6C)),
     "Intel Skylake-SP .. Ice Lake-SP", 64, 128,
     "2 x 512-bit FMA ports (parts with one 512-bit FMA unit do half: errs high); int8 2 x VPDPBUSD zmm"),
    ("GenuineIntel", 6, tuple((m, m, 4.8, "Xeon w9-3495X") for m in (0x8F, 0xCF, 0xAD, 0xAE)),
     "Intel Sapphire Rapids .. Granite Rapids", 64, 1024,
     "2 x 512-bit FMA ports; int8 AMX TDPBUSD: 16x16x64 = 16,384 u8*s8 MACs per 16 cycles"),
)
# Where neither the machine nor the table bounds the clock: the highest boost clock of any x86 part.
X86_HIGHEST_BOOST = (6.2, "Core i9-14900KS")
# By instruction set (the fallback): each row is the best the ISA allows on any core that has it.
FP32_PER_CYCLE = (("avx512f", 64, "2 x 512-bit FMA (16 fp32 lanes) x 2 FLOP"),
                  ("avx2+fma", 32, "2 x 256-bit FMA (8 fp32 lanes) x 2 FLOP"),
                  ("avx", 16, "256-bit add + 256-bit multiply (8 fp32 lanes each)"),
                  ("sse", 8, "128-bit add + 128-bit multiply (4 fp32 lanes each)"))
INT8_MACS_PER_CYCLE = (("amx_int8", 1024, "AMX TDPBUSD: 16x16x64 = 16,384 u8*s8 MACs per 16 cycles"),
                       ("avx512_vnni", 128, "2 x VPDPBUSD zmm: 64 u8*s8 MACs each"),
                       ("avx_vnni", 64, "2 x VPDPBUSD ymm: 32 u8*s8 MACs each"),
                       ("avx512bw", 128, "2 x VPMADDUBSW zmm: 64 u8*s8 MACs each (widening adds not counted)"),
                       ("avx2", 64, "2 x VPMADDUBSW ymm: 32 u8*s8 MACs each (widening adds not counted)"),
                       ("sse", 32, "2 x PMADDUBSW xmm: 16 u8*s8 MACs each"))


def torch_flops(net, x) -> int:
    """FLOPs of one forward pass of `net` on the tensor `x` (its batch and size), by torch.utils.flop_counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x)
    return int(counter.get_total_flops())


def _fixed_input(model, shape: tuple[int, ...]):
    """A copy of the ONNX model whose single graph input has the concrete `shape`."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected one graph input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ValueError(f"input {inputs[0].name} has rank {len(dims)}, shape {shape} given")
    for d, n in zip(dims, shape):
        d.Clear()
        d.dim_value = int(n)
    return model


def onnx_flops(path: str | Path, shape: tuple[int, ...]) -> dict:
    """{"flops", "macs", "by_op"}: 2 x the multiply-adds of Conv / ConvTranspose / Gemm / MatMul in the ONNX file
    at input `shape`, from shapes inferred by onnx.shape_inference (quantised graphs count alike: their Conv nodes
    read dequantised tensors of the same shapes)."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(_fixed_input(onnx.load(str(path)), shape), strict_mode=True, data_prop=True)
    shapes = {}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    def shape_of(name: str, node) -> list[int]:
        if name not in shapes:
            raise ValueError(f"{node.op_type} {node.name!r}: no inferred shape for {name!r}")
        return shapes[name]

    by_op: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, y = shape_of(node.input[1], node), shape_of(node.output[0], node)
            macs = int(np.prod(y)) * int(np.prod(w[1:]))  # N*Cout*Hout*Wout x (Cin/group)*kh*kw
        elif node.op_type == "ConvTranspose":
            x, w = shape_of(node.input[0], node), shape_of(node.input[1], node)
            macs = int(np.prod(x)) * int(np.prod(w[1:]))  # every input pixel meets (Cout/group)*kh*kw weights
        elif node.op_type in ("Gemm", "MatMul"):
            a, y = shape_of(node.input[0], node), shape_of(node.output[0], node)
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            macs = int(np.prod(y)) * k
        else:
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    macs = sum(by_op.values())
    return {"flops": 2 * macs, "macs": macs, "by_op": by_op}


def cpu_facts(cpuinfo: str) -> dict:
    """{"model", "vendor", "family", "model_number", "flags", "mhz", "hypervisor"} of the first processor in a
    /proc/cpuinfo text (family / model_number None when not stated)."""
    first = cpuinfo.split("\n\n")[0]
    get = lambda key: (re.search(rf"^{key}\s*:\s*(.*)$", first, re.M) or [None, ""])[1].strip()  # noqa: E731
    mhz, family, model = get("cpu MHz"), get("cpu family"), get("model")
    flags = set(get("flags").split())
    return {"model": get("model name"), "vendor": get("vendor_id"), "family": int(family) if family.isdigit() else None,
            "model_number": int(model) if model.isdigit() else None, "flags": flags, "mhz": float(mhz) if mhz else None,
            "hypervisor": "hypervisor" in flags}


def _best(table, flags: set[str]) -> tuple[str, int, str]:
    """The fastest row whose instruction sets the flags list (SSE: any x86-64)."""
    rows = [r for r in table if r[0] == "sse" or all(n in flags for n in r[0].split("+"))]
    return max(rows, key=lambda r: r[1])


def _row(name: str) -> tuple:
    return next(r for r in MICROARCHITECTURES if r[3] == name)


def _has_avx512(row: tuple) -> bool:
    return row[4] >= 64 or row[3] == "AMD Zen 4"


def microarchitecture(facts: dict) -> tuple[tuple | None, str]:
    """(MICROARCHITECTURES row or None, why) for the CPU of `facts`: by CPUID vendor/family/model when the flags
    agree with that core (AVX-512 or not); for AMD also by the flags that tell its cores apart (AVX-512 with AVX-VNNI
    is Zen 5, AVX-512 alone Zen 4, AVX2 Zen 2/3; Zen and Zen+ only by their CPUID model). Under a hypervisor the
    stated model is the hypervisor's choice (QEMU's "EPYC" is family 23 model 1, the first EPYC, whatever the host),
    so there the wider of the two is taken: the peak errs high, never low."""
    fam, mod, flags = facts.get("family"), facts.get("model_number"), facts["flags"]
    ident = f"CPUID {facts.get('vendor') or '?'} family {fam} model {mod}"
    by_id, id_why = None, f"{ident} not in the table"
    if fam is not None and mod is not None:
        for row in MICROARCHITECTURES:
            if row[0] == facts.get("vendor") and row[1] == fam and any(r[0] <= mod <= r[1] for r in row[2]):
                if _has_avx512(row) == ("avx512f" in flags):
                    by_id, id_why = row, f"{ident}: {row[3]}"
                else:
                    id_why = f"{ident} ({row[3]}) contradicted by the flags' AVX-512 support"
                break
    by_flags = None
    if facts.get("vendor") == "AuthenticAMD" and "avx2" in flags and "fma" in flags:
        by_flags = _row(("AMD Zen 5" if "avx_vnni" in flags else "AMD Zen 4") if "avx512f" in flags else "AMD Zen 2")
    if by_id is not None and (by_flags is None or not facts.get("hypervisor") or by_id[4] >= by_flags[4]):
        return by_id, id_why
    if by_flags is not None:
        under = " under a hypervisor, which states a model of its choice" if by_id is not None else ""
        return by_flags, f"{id_why}{under}; the AMD core the flags show: {by_flags[3]} class"
    return None, id_why


def highest_boost(row: tuple | None, facts: dict) -> tuple[float, str]:
    """(GHz, part) of the fastest part this CPU can be: the table row's model range that holds its CPUID model, else
    the row's fastest range (a hypervisor's stand-in model), else the fastest x86 part of any kind."""
    if row is None:
        return X86_HIGHEST_BOOST
    if facts.get("family") == row[1]:
        for first, last, ghz, part in row[2]:
            if first <= (facts.get("model_number") or -1) <= last:
                return ghz, part
    _, _, ghz, part = max(row[2], key=lambda r: r[2])
    return ghz, part


def peak_rates(cores: int, cpuinfo: str, clock_ghz: float | None = None, gemm_gflops: float | None = None) -> dict:
    """Peak fp32 FLOP/s and int8 OP/s (a MAC = 2 OP) of `cores` cores, and how they were derived.

    Per core and cycle: the microarchitecture's width (`microarchitecture`, MICROARCHITECTURES), else the widest
    instructions' best case (FP32_PER_CYCLE / INT8_MACS_PER_CYCLE); a row that a measured fp32 GEMM beats at the
    clock the row allows is not this core, and the next evidence is taken (the source says so).
    The clock is the highest of: `clock_ghz` (`stated_clock_ghz`, cpufreq's maximum, turbo included), the stated one
    (/proc/cpuinfo; under a hypervisor the nominal clock, not the turbo one), where no maximum is stated the highest
    boost clock of the parts this CPU can be (`highest_boost`), and the one a measured fp32 GEMM implies (rate /
    (cores x fp32 FLOP per cycle): the cores ran at least that fast). Each can only be too low, so the highest is the
    best bound. `gemm_gflops` is kept beside the peak (`gemm_gflops`): the rate a real fp32 kernel reached here."""
    facts = cpu_facts(cpuinfo)
    fp_isa, fp_isa_cycle, fp_isa_why = _best(FP32_PER_CYCLE, facts["flags"])
    i8_isa, i8_isa_cycle, i8_isa_why = _best(INT8_MACS_PER_CYCLE, facts["flags"])
    known = max(clock_ghz or 0.0, (facts["mhz"] or 0.0) / 1000)
    row, why = microarchitecture(facts)
    if row is not None and gemm_gflops:
        row_clock = known if clock_ghz else max(known, highest_boost(row, facts)[0])
        if row_clock > 0 and gemm_gflops > 1.02 * cores * row[4] * row_clock:
            why = (f"{why} dropped: the fp32 GEMM reached {gemm_gflops:.0f} GFLOP/s, more than its "
                   f"{cores * row[4] * row_clock:.0f} at {row_clock:.2f} GHz")
            row = None
    if row is not None:
        name, fp_cycle, i8_cycle, how = row[3], row[4], row[5], row[6]
        fp = {"isa": name, "flop_per_cycle_core": fp_cycle, "how": how, "source": why}
        i8 = {"isa": name, "macs_per_cycle_core": i8_cycle, "how": how, "source": why}
    else:
        fp_cycle, i8_cycle = fp_isa_cycle, i8_isa_cycle
        src = f"{why}; widest instructions' best case"
        fp = {"isa": fp_isa, "flop_per_cycle_core": fp_cycle, "how": fp_isa_why, "source": src}
        i8 = {"isa": i8_isa, "macs_per_cycle_core": i8_cycle, "how": i8_isa_why, "source": src}
    clocks = {"cpufreq cpuinfo_max_freq": clock_ghz or 0.0, "/proc/cpuinfo cpu MHz": (facts["mhz"] or 0.0) / 1000}
    if not clock_ghz:
        boost, part = highest_boost(row, facts)
        clocks[f"boost clock of the {part} (no maximum stated here)"] = boost
    clocks["implied by the fp32 GEMM"] = (gemm_gflops or 0.0) / (cores * fp_cycle)
    source, ghz = max(clocks.items(), key=lambda kv: kv[1])
    fp["gflops"] = cores * fp_cycle * ghz
    i8["gops"] = cores * 2 * i8_cycle * ghz
    return {"cpu": facts["model"], "vendor": facts["vendor"], "family": facts["family"],
            "model_number": facts["model_number"], "hypervisor": facts["hypervisor"], "cores": cores,
            "clock_ghz": round(ghz, 3), "clock_source": source, "clocks_ghz": {k: round(v, 3) for k, v in clocks.items()},
            "gemm_gflops": gemm_gflops, "fp32": fp, "int8": i8}


def peak_label(peak: dict, kind: str = "fp32") -> str:
    """One line naming a peak and its source, for a table row: '151 GFLOP/s fp32 peak (AMD Zen 2: 2 cores x 32
    FLOP/cycle x 2.36 GHz, flags of an AMD core ...)'."""
    p = peak[kind]
    rate = f"{p['gflops']:.0f} GFLOP/s fp32" if kind == "fp32" else f"{p['gops']:.0f} GOP/s int8"
    per = f"{p['flop_per_cycle_core']} FLOP" if kind == "fp32" else f"{p['macs_per_cycle_core']} MAC"
    return (f"{rate} peak: {peak['cores']} cores x {per}/cycle x {peak['clock_ghz']:.2f} GHz, {p['isa']} "
            f"({p['source']})")


def stated_clock_ghz(root: str = "/sys/devices/system/cpu/cpu0/cpufreq") -> float | None:
    """The highest clock the kernel states for a core (cpufreq cpuinfo_max_freq, turbo included), None where the
    machine does not describe it (virtual machines often do not: then /proc/cpuinfo "cpu MHz" is used)."""
    path = Path(root) / "cpuinfo_max_freq"
    try:
        return int(path.read_text().strip()) / 1e6
    except (OSError, ValueError):
        return None


def gemm_gflops(threads: int, n: int = 2048, seconds: float = 3.0) -> float:
    """Best rate (GFLOP/s) of torch's fp32 n x n matrix product on `threads` threads, over `seconds`."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9
