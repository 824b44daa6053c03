"""`make bench-smoke`: every benchmark script end to end at tiny sizes (scripts/bench.sh --quick), in the normal suite,
so that a benchmark that breaks fails CI. Checks that each row is produced and that the scripts build their models
through the project's own commands (nothing imported from tests/); never a timing."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

SCRIPTS = sorted(p for p in (REPO / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_import_nothing_from_tests(script):
    tree = ast.parse(script.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n == "tests" or n.startswith("tests.")], f"{script.name} imports from tests/"


def test_bench_smoke_produces_every_row(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    readme = (REPO / "README.md").read_text()
    r = subprocess.run(["bash", str(REPO / "scripts" / "bench.sh"), str(out), "--quick"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=3000)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert (REPO / "README.md").read_text() == readme  # the smoke run renders the table, never writes it
    assert "would write the benchmark table into" in r.stderr
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")][1:]  # after the header
    wanted = ["datatool convert", "asset training (Lightning vs plain loop)"]
    for model in ("MobileNetV2-Unet", "MobileNetV2-Linknet"):
        wanted += [f"{model}: our ONNX Runtime backend vs bare", f"{model}: ONNX Runtime vs PyTorch eager",
                   f"{model}: ONNX Runtime INT8", f"{model}: OpenVINO vs ONNX Runtime FP32",
                   f"{model}: PyTorch eager FP32 vs FLOP floor", f"{model}: ONNX Runtime FP32 vs FLOP floor",
                   f"{model}: OpenVINO FP32 vs FLOP floor"]
    for workload in ("dagm512", "rgb256"):
        wanted += [f"({workload}, ", f"({workload}, "]
    wanted.append("server RSS after 1,000 requests vs after 100 (dagm512)")
    for w in wanted:
        assert any(w in row for row in rows), f"no row {w!r} in:\n" + "\n".join(rows)
    assert sum("concurrency 1" in row for row in rows) == sum("concurrency 8" in row for row in rows) == 2
    assert all(len(re.findall(r"(?<!\\)\|", row)) == 5 for row in rows), rows  # 4 columns; \| is text
    # the floor rows name their peak's source and the measured GEMM beside it
    floors = [row for row in rows if "FLOP floor" in row]
    assert floors and all("peak:" in row and "GEMM reached here" in row for row in floors)
    doc = json.loads((out / "inference.json").read_text())
    assert doc["peak"]["fp32"]["source"] and doc["peak"]["gemm_gflops"] > 0
    for m in doc["models"]:  # the INT8 row is a timed export or the gate's refusal, with its reason
        assert "verification" in m["int8"] or m["int8"]["refused"]
    server = json.loads((out / "server.json").read_text())
    assert [w["workload"] for w in server["workloads"]] == ["dagm512", "rgb256"]
    assert all(w["c8"]["errors"] == 0 and w["c1"]["errors"] == 0 for w in server["workloads"])
