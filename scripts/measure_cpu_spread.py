#!/usr/bin/env python3
"""How far real PEFT's own golden numbers move when the CPU's kernels change: the measured basis of the tests'
cross-CPU tolerances (test/fixtures/cpu_spread.json).

Bit-identity to PEFT holds only where PyTorch picks the same kernels as on the CPU the fixtures were made on: ATen's
vectorised kernels (AVX2 / AVX512 builds), MKL's sgemm code path and oneDNN's ISA depend on the CPU, and so does the
order of every multi-threaded reduction. This script re-runs the fixture generators (scripts/gen_fixtures.py and
scripts/gen_fixtures_trainer.py, i.e. PEFT 0.21 + transformers 5.17 themselves) in a scratch copy of the repository
under each of those choices, forced through the libraries' own switches, and compares every golden number with the
committed one:

  ATEN_CPU_CAPABILITY=avx2|default   ATen's kernels as on a CPU without AVX-512 (or without AVX2)
  MKL_ENABLE_INSTRUCTIONS=AVX2|SSE4_2  MKL's sgemm as on such a CPU (on AMD, MKL takes its AVX2 path anyway)
  MKL_CBWR=COMPATIBLE                MKL's generic sgemm: another blocking and summation order, as another
                                     CPU's MKL path (on Intel, MKL runs AVX-512 kernels that AMD never gets)
  ONEDNN_MAX_CPU_ISA=AVX2              oneDNN's kernels as on such a CPU
  threads=2|3                        PyTorch's reductions split over more threads

plus the combinations a real AVX2-only CPU gets. The error metric is the tests' own: max|a-b| / max|b| per tensor
(logits only where attention_mask is 1), absolute for the logged loss, relative for grad_norm.

Run by hand (about 30 s per variant on 2 cores), from the repository root, with the fixture environment
(scripts/requirements-fixtures.txt):

    .venv-fixtures/bin/python scripts/measure_cpu_spread.py            # writes test/fixtures/cpu_spread.json

The output records the CPU it ran on; tests read only the committed numbers (they never run Python).
"""

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
from fixture_cpu import cpu_record  # noqa: E402

AVX2_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
OTHER_GEMM = {"MKL_CBWR": "COMPATIBLE"}
# (name, environment, threads, also the torchrun fixtures: their workers run one thread each)
VARIANTS = [
    ("aten_avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, 1, True),
    ("aten_default", {"ATEN_CPU_CAPABILITY": "default"}, 1, True),
    ("mkl_avx2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1, False),
    ("mkl_sse42", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, 1, False),
    ("mkl_compatible", OTHER_GEMM, 1, True),
    ("onednn_avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, False),
    ("avx2_cpu", AVX2_CPU, 1, False),
    ("threads_2", {}, 2, False),
    ("threads_3", {}, 3, False),
    ("avx2_cpu_threads_2", AVX2_CPU, 2, False),
    ("other_gemm_avx2", dict(AVX2_CPU, **OTHER_GEMM), 1, True),
    ("other_gemm_avx2_threads_2", dict(AVX2_CPU, **OTHER_GEMM), 2, False),
    ("other_gemm_default_threads_2", dict(OTHER_GEMM, ATEN_CPU_CAPABILITY="default"), 2, False),
]

# Runs a generator with torch.set_num_threads pinned to N (the generators ask for 1).
RUNNER = """
import runpy, sys, torch
n = int(sys.argv[1]); orig = torch.set_num_threads
torch.set_num_threads = lambda _k: orig(n)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def rel(a, b, mask=None):
    a, b = a.double().flatten(), b.double().flatten()
    if mask is not None:
        a, b = a[mask], b[mask]
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    if math.isnan(diff):
        return math.inf
    return diff if scale == 0 else diff / scale


def scratch_copy():
    root = tempfile.mkdtemp(prefix="peft-node-spread-")
    shutil.copytree(os.path.join(REPO_ROOT, "scripts"), os.path.join(root, "scripts"),
                    ignore=shutil.ignore_patterns("__pycache__", "fuzz"))
    os.makedirs(os.path.join(root, "test"))
    shutil.copytree(os.path.join(REPO_ROOT, "test", "fixtures"), os.path.join(root, "test", "fixtures"))
    return root


def generate(root, env_extra, threads, ddp):
    env = dict(os.environ, **env_extra)
    for script in ("gen_fixtures.py", "gen_fixtures_trainer.py") + (("gen_fixtures_ddp.py",) if ddp else ()):
        p = subprocess.run([sys.executable, "-c", RUNNER, str(threads), os.path.join(root, "scripts", script)],
                           cwd=root, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{script} failed under {env_extra} threads={threads}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def compare_golden(root):
    out = {}
    cases = json.load(open(os.path.join(REPO_ROOT, "test/fixtures/golden/cases.json"), encoding="utf-8"))
    for c in cases:
        ref = load_file(os.path.join(REPO_ROOT, "test/fixtures/golden", c["file"]))
        new = load_file(os.path.join(root, "test/fixtures/golden", c["file"]))
        row = {}
        mask = None
        if c["has_mask"]:
            V = ref["logits"].shape[-1]
            mask = ref["attention_mask"].flatten().repeat_interleave(V) == 1
        row["logits"] = rel(new["logits"], ref["logits"], mask)
        if c["has_labels"]:
            row["loss"] = rel(new["loss"], ref["loss"])
            row["grads"] = max(rel(new[k], ref[k]) for k in ref if k.startswith("grad."))
        row["prompt_embeddings"] = rel(new["prompt_embeddings"], ref["prompt_embeddings"])
        out[c["name"]] = row
    return out


def compare_trainer(root, sub="trainer", prefixes=("run_",)):
    out = {}
    d_ref = os.path.join(REPO_ROOT, "test/fixtures", sub)
    d_new = os.path.join(root, "test/fixtures", sub)
    for f in sorted(os.listdir(d_ref)):
        if not (f.startswith(prefixes) and f.endswith(".json") and os.path.exists(os.path.join(d_ref, f[:-5] + ".safetensors"))):
            continue
        name = f[:-5]
        rj = json.load(open(os.path.join(d_ref, f), encoding="utf-8"))
        nj = json.load(open(os.path.join(d_new, f), encoding="utf-8"))
        loss = grad_norm = 0.0
        for a, b in zip(nj["log_history"], rj["log_history"]):
            for k in ("loss", "train_loss"):
                if k in b and math.isfinite(b[k]):
                    loss = max(loss, abs(a[k] - b[k]))
            if "grad_norm" in b and math.isfinite(b["grad_norm"]):
                grad_norm = max(grad_norm, abs(a["grad_norm"] - b["grad_norm"]) / abs(b["grad_norm"]))
        rt = load_file(os.path.join(d_ref, name + ".safetensors"))
        nt = load_file(os.path.join(d_new, name + ".safetensors"))
        params = {k[len("param_final."):]: rel(nt[k], rt[k]) for k in rt if k.startswith("param_final.")}
        out[name] = {"loss_abs": loss, "grad_norm_rel": grad_norm, "param_final_rel": params,
                     "param_final_rel_max": max(params.values())}
    return out


def main():
    only = sys.argv[1:]
    results = {}
    for name, env_extra, threads, ddp in VARIANTS:
        if only and name not in only:
            continue
        root = scratch_copy()
        try:
            generate(root, env_extra, threads, ddp)
            results[name] = {"env": env_extra, "threads": threads, "golden": compare_golden(root),
                             "trainer": compare_trainer(root)}
            if ddp:
                results[name]["ddp"] = compare_trainer(root, "ddp", ("ddp_", "single_"))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        g = results[name]["golden"]
        t = results[name]["trainer"]
        print(f"[{name}] forward: logits {max(r['logits'] for r in g.values()):.2e} "
              f"grads {max(r.get('grads', 0) for r in g.values()):.2e} | trainer: "
              + " ".join(f"{k} loss {v['loss_abs']:.1e} gn {v['grad_norm_rel']:.1e} param {v['param_final_rel_max']:.1e}"
                         for k, v in t.items())
              + (" | ddp: " + " ".join(f"{k} param {v['param_final_rel_max']:.1e}" for k, v in results[name]["ddp"].items())
                 if ddp else ""), flush=True)

    worst_golden = {}
    worst_trainer = {}
    worst_ddp = {}
    for r in results.values():
        for run, row in r.get("ddp", {}).items():
            w = worst_ddp.setdefault(run, {"loss_abs": 0.0, "grad_norm_rel": 0.0, "param_final_rel": 0.0})
            w["loss_abs"] = max(w["loss_abs"], row["loss_abs"])
            w["grad_norm_rel"] = max(w["grad_norm_rel"], row["grad_norm_rel"])
            w["param_final_rel"] = max(w["param_final_rel"], row["param_final_rel_max"])
        for row in r["golden"].values():
            for k, v in row.items():
                worst_golden[k] = max(worst_golden.get(k, 0.0), v)
        for run, row in r["trainer"].items():
            w = worst_trainer.setdefault(run, {"loss_abs": 0.0, "grad_norm_rel": 0.0, "param_final_rel": 0.0})
            w["loss_abs"] = max(w["loss_abs"], row["loss_abs"])
            w["grad_norm_rel"] = max(w["grad_norm_rel"], row["grad_norm_rel"])
            w["param_final_rel"] = max(w["param_final_rel"], row["param_final_rel_max"])
    doc = {
        "what": "PEFT's own golden numbers re-generated under other CPU kernel choices, compared with the committed "
                "fixtures (scripts/measure_cpu_spread.py)",
        "made_on": cpu_record(),
        "python": platform.python_version(),
        "worst": {"golden": worst_golden, "trainer": worst_trainer, "ddp": worst_ddp},
        "variants": results,
    }
    if not only:
        path = os.path.join(REPO_ROOT, "test/fixtures/cpu_spread.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {path}")
    print(json.dumps(doc["worst"], indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
