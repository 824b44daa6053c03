"""`asset benchmark`: one table + JSON with the machine, statuses with reasons, clear errors for bad requests."""

from __future__ import annotations

import json

import pytest

from asset.backends import backend_status
from asset.benchmark import Row, parse_targets, to_markdown
from asset.cli import main
from tests.asset.backend_helpers import copy_model, outlier_model, shared

HEADER = "| backend | precision | batch | status | size (MB) | accuracy | IoU | p50 ms | p90 ms | p99 ms | img/s |"


def test_benchmark_table_and_json(tmp_path, capsys):
    m = shared()["model"]
    out = tmp_path / "bench"
    assert main(["benchmark", "--model", str(m), "--backends", "pytorch,onnxruntime,onnxruntime:int8,openvino",
                 "--batch", "1,2", "--min-iter", "3", "--min-seconds", "0", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert HEADER in table
    doc = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").read_text() == to_markdown(doc)
    assert doc["schema"] == "asset-benchmark/1" and doc["reference"] == "pytorch"
    assert {"cpu", "usable_cores", "gpus", "versions", "isa"} <= set(doc["machine"])
    assert doc["machine"]["versions"]["onnxruntime"]
    rows = doc["rows"]
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        (b, p, n) for b, p in [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                               ("openvino", "fp32")] for n in (1, 2)]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["throughput"] > 0 and r["iterations"] >= 3
        assert r["size_mb"] > 0 and 0 <= r["accuracy"] <= 1 and 0 <= r["pixel_iou"] <= 1
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert len({(r["accuracy"], r["pixel_iou"]) for r in fp32}) == 1  # same predictions, same figures
    assert len(table.splitlines()) >= 10


def test_default_run_lists_every_backend_with_a_status(tmp_path):
    m = copy_model(shared()["model"], tmp_path / "m")
    from asset import modeldir

    card = modeldir.verify(m)
    del card["exports"]["openvino"]  # openvino then reads the ONNX file
    del card["exports"]["onnx-int8"]
    modeldir.write_card(m, card)
    from asset.benchmark import run_benchmark

    doc = run_benchmark(m, min_iter=2, min_seconds=0)
    by = {(r["backend"], r["precision"]): r for r in doc["rows"]}
    assert by[("onnxruntime", "fp32")]["status"] == "ok" and by[("openvino", "fp32")]["status"] == "ok"
    assert by[("openvino", "fp32")]["file"] == "exports/model.onnx"
    assert by[("onnxruntime", "int8")]["status"] == "failed"
    assert "asset export --model" in by[("onnxruntime", "int8")]["reason"]
    reason = backend_status()["tensorrt"]
    if reason:
        assert by[("tensorrt", "fp16")]["status"] == "unavailable" and by[("tensorrt", "fp16")]["reason"] == reason


def test_fp32_export_that_disagrees_with_pytorch_is_exported_but_wrong(tmp_path):
    """An ONNX file whose head bias was shifted (a corrupted or stale export): it runs, but decides otherwise."""
    import onnx
    from onnx import numpy_helper

    from asset import modeldir
    from asset.benchmark import run_benchmark

    m = copy_model(shared()["model"], tmp_path / "m")
    path = m / "exports" / "model.onnx"
    model = onnx.load(path)
    head = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    bias = next(i for i in model.graph.initializer if i.name == head.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 20.0, bias.name))  # every pixel a defect
    onnx.save(model, path)
    modeldir.write_card(m, modeldir.read_card_unverified(m))  # checksums over the changed file
    doc = run_benchmark(m, [("pytorch", "fp32"), ("onnxruntime", "fp32")], min_iter=2, min_seconds=0)
    by = {r["backend"]: r for r in doc["rows"]}
    assert by["pytorch"]["status"] == "ok" and doc["reference"] == "pytorch"
    wrong = by["onnxruntime"]
    assert wrong["status"] == "exported but wrong", wrong
    assert wrong["reason"].startswith("differs from pytorch: decisions equal ")
    assert wrong["accuracy"] < by["pytorch"]["accuracy"] and wrong["p50_ms"] > 0  # still measured
    assert "| onnxruntime | fp32 | 1 | exported but wrong: differs from pytorch" in to_markdown(doc)


def test_int8_export_let_through_by_a_loosened_gate_is_exported_but_wrong(tmp_path):
    """INT8 of a model with an activation outlier, exported with the gate switched off: the benchmark, at its
    default tolerance, still reports it."""
    from asset.benchmark import run_benchmark
    from asset.export import export_model

    m = outlier_model(tmp_path / "m")
    export_model(m, "onnx-int8", calib_images=8, max_accuracy_drop=1.0, max_ap_drop=1.0, max_lost_defects=1000,
                 log=lambda msg: None)
    doc = run_benchmark(m, [("onnxruntime", "fp32"), ("onnxruntime", "int8")], min_iter=2, min_seconds=0)
    by = {r["precision"]: r for r in doc["rows"]}
    assert by["fp32"]["status"] == "ok" and by["fp32"]["accuracy"] == 1.0 and doc["reference"] == "onnxruntime"
    assert by["int8"]["status"] == "exported but wrong", by["int8"]
    assert by["int8"]["reason"].startswith("accuracy 1.0000 -> ") and by["int8"]["accuracy"] < 1.0


def test_exported_but_wrong_row_in_markdown():
    doc = {"machine": {"cpu": "x", "usable_cores": 2, "gpus": [], "versions": {}}, "images": 4, "split": "val",
           "model": {"arch": "unet", "encoder": "e"},
           "rows": [Row("onnxruntime", "int8", 1, status="exported but wrong", reason="accuracy 1.0 -> 0.5").__dict__]}
    assert "| onnxruntime | int8 | 1 | exported but wrong: accuracy 1.0 -> 0.5 |" in to_markdown(doc)


def test_bad_requests(tmp_path, capsys):
    m = shared()["model"]
    assert main(["benchmark", "--model", str(m), "--backends", "tflite"]) == 2
    assert ("unknown backend 'tflite'; valid: pytorch, onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt, openvino, "
            "tensorrt") in capsys.readouterr().err
    assert main(["benchmark", "--model", str(m), "--backends", "onnxruntime:fp16"]) == 2
    assert "runs fp32, int8, not 'fp16'" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(m), "--size", "big"]) == 2
    assert "--size must look like 512x512" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(tmp_path / "nope")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    reason = backend_status()["tensorrt"]
    if reason:
        assert main(["benchmark", "--model", str(m), "--backends", "tensorrt", "--out", str(tmp_path / "x")]) == 2
        assert f"cannot benchmark 'tensorrt' here: {reason}" in capsys.readouterr().err
        assert not list(tmp_path.glob("x*"))
    with pytest.raises(SystemExit):
        main(["benchmark", "--model", str(m), "--batch", "0"])


def test_parse_targets():
    assert parse_targets("ort,onnxruntime:int8,trt,torch") == [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                               ("tensorrt", "fp16"), ("pytorch", "fp32")]


# ----------------------------------------------------------------------------- the FLOP floor (scripts/flops.py)
def _export(net, x, path):
    import torch

    with torch.no_grad():
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}})


def test_flop_counts_agree_with_a_hand_count(tmp_path):
    """Conv, ConvTranspose and Gemm MACs, by hand: both counters give exactly 2 x MACs."""
    import torch

    from scripts.flops import onnx_flops, torch_flops

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=4),
                              torch.nn.ConvTranspose2d(8, 4, 2, stride=2), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 24 * 40, 5)).eval()
    x = torch.zeros(2, 3, 12, 20)
    macs = 2 * (8 * 12 * 20 * 3 * 9 + 8 * 12 * 20 * 2 * 9 + 8 * 12 * 20 * 4 * 4 + 5 * 4 * 24 * 40)
    assert torch_flops(net, x) == 2 * macs
    torch.onnx.export(net, (x,), str(tmp_path / "n.onnx"), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})
    got = onnx_flops(tmp_path / "n.onnx", (2, 3, 12, 20))
    assert got["flops"] == 2 * macs and set(got["by_op"]) == {"Conv", "ConvTranspose", "Gemm"}


@pytest.mark.parametrize("arch", ["unet", "linknet"])
def test_flop_counts_of_an_smp_model_agree(tmp_path, arch):
    """torch.utils.flop_counter on the module and the ONNX graph's count agree within 0.1% at the input given (batch
    and size), and scale with it: the count is of the network that runs, at the size it runs."""
    import torch

    from asset.models.factory import build_model
    from scripts.flops import onnx_flops, torch_flops

    net = build_model(arch, "mobilenet_v2", 1, "none").eval()
    x = torch.zeros(2, 1, 64, 96)
    _export(net, x[:1, :, :32, :32], tmp_path / "m.onnx")  # traced at another size: the count follows `shape`
    counted = torch_flops(net, x)
    graph = onnx_flops(tmp_path / "m.onnx", tuple(x.shape))
    assert abs(graph["flops"] - counted) <= 0.001 * counted
    assert torch_flops(net, x[:1]) * 2 == counted  # linear in the batch
    assert onnx_flops(tmp_path / "m.onnx", (1, 1, 128, 192))["flops"] == pytest.approx(2 * graph["flops"], rel=0.01)
    if arch == "linknet":
        assert graph["by_op"]["ConvTranspose"] > 0


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Test CPU
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 {flags}

processor\t: 1
model name\t: Test CPU
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 {flags}
"""


@pytest.mark.parametrize("flags,fp32,int8", [
    ("avx avx2 fma", 2 * 32 * 2.0, 2 * 2 * 64 * 2.0),  # 2 x 256-bit FMA; 2 x VPMADDUBSW ymm (32 MACs)
    ("avx avx2 fma avx512f avx512bw avx512_vnni", 2 * 64 * 2.0, 2 * 2 * 128 * 2.0),
    ("avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8", 2 * 64 * 2.0, 2 * 2 * 1024 * 2.0),
    ("avx", 2 * 16 * 2.0, 2 * 2 * 32 * 2.0),  # no FMA, no AVX2: 128-bit PMADDUBSW
])
def test_peak_rates_from_flags_and_clock(flags, fp32, int8):
    from scripts.flops import peak_rates

    p = peak_rates(2, CPUINFO.format(flags=flags), clock_ghz=2.0)
    assert p["clock_source"] == "cpufreq cpuinfo_max_freq" and p["clock_ghz"] == 2.0
    assert p["fp32"]["gflops"] == pytest.approx(fp32) and p["int8"]["gops"] == pytest.approx(int8)


AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 avx avx2 fma {flags}
"""


@pytest.mark.parametrize("family,model,flags,core,fp32,int8", [
    (25, 0x11, "avx512f avx512bw avx512_vnni", "AMD Zen 4", 32, 64),  # AVX-512 on 256-bit units: not 64
    (25, 0x01, "", "AMD Zen 3", 32, 64),
    (23, 0x31, "", "AMD Zen 2", 32, 64),
    (23, 0x01, "", "AMD Zen / Zen+", 16, 32),  # bare metal: 2 x 128-bit FMA
    (23, 0x01, "hypervisor", "AMD Zen 2", 32, 64),  # QEMU's "EPYC" stand-in model: the flags' core, wider
    (23, 0x01, "hypervisor avx512f avx512bw avx512_vnni", "AMD Zen 4", 32, 64),  # stand-in model, Zen 4 flags
    (26, 0x02, "avx512f avx512bw avx512_vnni avx_vnni", "AMD Zen 5", 64, 128),
])
def test_peak_per_microarchitecture(family, model, flags, core, fp32, int8):
    from scripts.flops import peak_label, peak_rates

    p = peak_rates(2, AMD.format(family=family, model=model, flags=flags), clock_ghz=2.0)
    assert p["fp32"]["isa"] == p["int8"]["isa"] == core, p["fp32"]["source"]
    assert p["fp32"]["flop_per_cycle_core"] == fp32 and p["int8"]["macs_per_cycle_core"] == int8
    assert p["fp32"]["gflops"] == pytest.approx(2 * fp32 * 2.0) and p["int8"]["gops"] == pytest.approx(2 * 2 * int8 * 2.0)
    assert f"family {family} model {model}" in p["fp32"]["source"]
    label = peak_label(p)
    assert label.startswith(f"{2 * fp32 * 2.0:.0f} GFLOP/s fp32 peak: 2 cores x {fp32} FLOP/cycle x 2.00 GHz, {core} (")


@pytest.mark.parametrize("family,model,flags,ghz,part", [
    (25, 0x11, "hypervisor avx512f avx512bw avx512_vnni", 4.4, "EPYC 9174F"),  # Genoa: the fastest EPYC 9004
    (25, 0x61, "avx512f avx512bw avx512_vnni", 5.7, "Ryzen 9 7950X"),  # Raphael
    (23, 0x01, "hypervisor avx512f avx512bw avx512_vnni", 5.7, "Ryzen 9 7950X"),  # stand-in model: any Zen 4
    (23, 0x31, "", 3.9, "EPYC 7F52"),
])
def test_where_no_maximum_is_stated_the_clock_is_the_fastest_part_s_boost(family, model, flags, ghz, part):
    """A hypervisor states the nominal clock (2.0 GHz here) while the host boosts above it (a Zen 4 EPYC's
    convolution reached 172 GFLOP/s on 2 cores, beyond 2 x 32 FLOP x 2.6 GHz): the boost clock of the fastest part
    this CPU can be bounds it."""
    from scripts.flops import peak_rates

    p = peak_rates(2, AMD.format(family=family, model=model, flags=flags), gemm_gflops=100.0)
    assert p["clock_ghz"] == ghz and p["clock_source"] == f"boost clock of the {part} (no maximum stated here)"
    assert p["fp32"]["gflops"] == pytest.approx(2 * p["fp32"]["flop_per_cycle_core"] * ghz)
    unknown = peak_rates(2, CPUINFO.format(flags="avx avx2 fma"))
    assert unknown["clock_ghz"] == 6.2 and "Core i9-14900KS" in unknown["clock_source"]


def test_a_gemm_faster_than_the_table_row_drops_the_row():
    """A measured GEMM beyond what the named core can do at the known clock: the row is not this core; the widest
    instructions' best case is taken, and the source says why."""
    from scripts.flops import peak_rates

    p = peak_rates(2, AMD.format(family=23, model=1, flags=""), clock_ghz=3.0, gemm_gflops=150.0)
    assert p["fp32"]["flop_per_cycle_core"] == 32 and p["fp32"]["isa"] == "avx2+fma"
    assert "dropped: the fp32 GEMM reached 150 GFLOP/s, more than its 96 at 3.00 GHz" in p["fp32"]["source"]
    assert p["gemm_gflops"] == 150.0 and p["clock_ghz"] == 3.0


def test_peak_clock_is_the_highest_evidence():
    """A cpufreq maximum or a GEMM faster than the cpuinfo clock allows raises the clock: the peak never errs low."""
    from scripts.flops import peak_rates

    text = CPUINFO.format(flags="avx avx2 fma")
    assert peak_rates(2, text, clock_ghz=3.1)["clock_ghz"] == 3.1
    by_gemm = peak_rates(2, text, clock_ghz=1.5, gemm_gflops=2 * 32 * 2.5)  # only possible at >= 2.5 GHz
    assert by_gemm["clock_ghz"] == 2.5 and by_gemm["clock_source"] == "implied by the fp32 GEMM"


def test_stated_clock_from_cpufreq_or_none(tmp_path):
    from scripts.flops import stated_clock_ghz

    assert stated_clock_ghz(str(tmp_path)) is None
    (tmp_path / "cpuinfo_max_freq").write_text("3500000\n")
    assert stated_clock_ghz(str(tmp_path)) == 3.5


def test_the_floor_is_a_floor_on_this_machine():
    """A convolution timed here never runs faster than its FLOPs at this machine's peak (a busy machine only makes
    it slower, so this holds under any load; it fails only when the peak is underestimated)."""
    import platform

    import torch

    from asset.backends import default_threads
    from scripts.flops import gemm_gflops, peak_rates, stated_clock_ghz, torch_flops

    if platform.machine() != "x86_64":
        pytest.skip("the peak table and the clock measurement are for x86-64")
    threads = default_threads()
    peak = peak_rates(threads, open("/proc/cpuinfo").read(), clock_ghz=stated_clock_ghz(),
                      gemm_gflops=gemm_gflops(threads, n=1024, seconds=0.5))
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(1, 64, 128, 128)
    flops = torch_flops(conv, x)
    with torch.inference_mode():
        conv(x)
        best = min(_seconds(lambda: conv(x)) for _ in range(5))
    assert best >= flops / (peak["fp32"]["gflops"] * 1e9), (best, flops, peak)


def _seconds(fn) -> float:
    import time

    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_every_export_backend_finds_the_file_it_runs(tmp_path):
    """The benchmark's file column and the file each backend opens both come from the model directory's export
    contract (asset/backends/base.py export_for): for every backend and precision the registry lists, the same file."""
    from asset import modeldir
    from asset.backends import BACKENDS
    from asset.backends.base import export_for
    from asset.benchmark import runs_file

    card = {"weights": "weights.pt", "exports": {k: {"file": kind.file} for k, kind in modeldir.EXPORT_KINDS.items()}}
    for kind in modeldir.EXPORT_KINDS.values():  # every recorded file exists, as export_for checks
        (tmp_path / kind.file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / kind.file).write_bytes(b"x")
    checked = 0
    for name, spec in BACKENDS.items():
        for precision in spec.precisions:
            if not modeldir.export_keys_for(name, precision):
                continue  # weights.pt backends
            file, why = runs_file(card, tmp_path, name, precision)
            assert file == export_for(card, tmp_path, name, precision)[2] and not why, (name, precision)
            checked += 1
    assert checked >= 8  # onnxruntime fp32/int8, its CUDA EP fp32/int8, its TensorRT EP fp32/fp16/int8, openvino...
    assert runs_file(card, tmp_path, "pytorch", "fp32") == (tmp_path / "weights.pt", "")
    assert runs_file(card, tmp_path, "openvino", "fp32")[0] == tmp_path / "exports/openvino/model.xml"
    del card["exports"]["openvino"], card["exports"]["onnx-int8"]
    assert runs_file(card, tmp_path, "openvino", "fp32")[0] == tmp_path / "exports/model.onnx"
    file, why = runs_file(card, tmp_path, "onnxruntime-cuda", "int8")
    assert file is None and why == f"not exported: asset export --model {tmp_path} --format onnx-int8"
    card["exports"]["onnx"]["file"] = "../elsewhere.onnx"  # a tampered card: a failed row, not a crash
    file, why = runs_file(card, tmp_path, "onnxruntime", "fp32")
    assert file is None and "outside the model directory" in why
