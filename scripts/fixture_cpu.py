"""The CPU a set of golden fixtures was made on, as the tests compare it with runtime_info().cpu.

PyTorch's float32 results are bit-reproducible only where it picks the same kernels: ATen's vectorised kernels
(torch.backends.cpu.get_cpu_capability()), MKL's and oneDNN's code paths, which follow the CPU's vendor, model and
ISA. A fixture directory's made_on.json records them; the tests assert bit-identity where the runtime CPU matches and
fall back to the measured cross-CPU tolerances (test/fixtures/cpu_spread.json) elsewhere.
"""

import json
import os

import torch

# The ISA extensions that change which float32 / bfloat16 kernels MKL, oneDNN and ATen pick.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
# Environment variables that make the libraries pick other kernels on the same CPU (test/helpers.ts reads the same list).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "ONEDNN_MAX_CPU_ISA",
              "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE")


def _proc_cpuinfo():
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    return fields


def cpu_record(threads=None):
    info = _proc_cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "vendor": info.get("vendor_id", ""),
        "family": int(info.get("cpu family", "0") or 0),
        "model": int(info.get("model", "0") or 0),
        "model_name": " ".join(info.get("model name", "").split()),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__.split("+")[0],
        "threads": threads if threads is not None else torch.get_num_threads(),
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }


def write_made_on(directory, threads=None):
    """Writes <directory>/made_on.json (the generators call it last, with the thread count they computed on)."""
    with open(os.path.join(directory, "made_on.json"), "w", encoding="utf-8") as f:
        json.dump(cpu_record(threads), f, indent=1, sort_keys=True)
        f.write("\n")
