#!/usr/bin/env python3
"""pytorch_model.bin fixtures (torch.save's zip format, good and hostile) for test/pytorch-bin.test.ts.

How to run (from the repository root, the environment of scripts/requirements-fixtures.txt; needs the committed
test/fixtures/tiny-bloom and tiny-bloom-f16):

    .venv-fixtures/bin/python scripts/gen_fixtures_bin.py

It rewrites test/fixtures/bin/ (only that folder; README.md there lists what each folder holds). transformers 5 no
longer writes .bin files, so the good ones are written with torch.save directly, as transformers 4's save_pretrained
did. Bytes differ between runs (torch.save records a random serialization id); contents do not.

Every good fixture is checked here to load in transformers with logits equal to the safetensors fixture's; every
malicious pickle is checked to REALLY run its payload under Python's pickle (it creates a marker file, removed again),
so the test's "nothing ran" means something. Each malformed file is checked to be refused by torch.load too.
"""

import collections
import io
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIX, "bin")
TINY = os.path.join(FIX, "tiny-bloom")
TINY_F16 = os.path.join(FIX, "tiny-bloom-f16")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# The payloads create these; test/pytorch-bin.test.ts checks they never appear.
MARKER_PREFIX = "/tmp/peft-node-evil-"

torch.manual_seed(0)
torch.set_num_threads(1)


def log(msg):
    print(msg, file=sys.stderr)


def folder(name, config_from=TINY, extra=()):
    d = os.path.join(OUT, name)
    os.makedirs(d)
    for f in ["config.json", *extra]:
        shutil.copy(os.path.join(config_from, f), d)
    return d


def logits(model_dir):
    ids = torch.tensor([[1, 17, 250, 3, 999, 42, 7]])
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir).eval()(ids).logits


def check_same_logits(bin_dir, reference_dir):
    a, b = logits(bin_dir), logits(reference_dir)
    assert a.dtype == b.dtype and torch.equal(a, b), f"{bin_dir}: logits differ from {reference_dir}"


# ---------------------------------------------------------------------------------------------------------------
# Hand-made archives in torch.save's layout, for the malformed and malicious cases


class Storage:
    """A storage referred to by persistent id, as torch.save writes it: ('storage', type, key, location, numel)."""

    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def torch_like_pickle(obj):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_archive(path, data_pkl, storages, prefix="archive", omit=()):
    """A zip laid out as torch.save's (written by Python's zipfile: stored, unaligned, no data descriptors)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data_pkl)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, raw in storages.items():
            if key not in omit:
                z.writestr(f"{prefix}/data/{key}", raw)
        z.writestr(f"{prefix}/version", "3\n")


def torch_refuses(path):
    try:
        torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    raise AssertionError(f"torch.load accepted {path}")


def rewrite_zip64(src, dst):
    """Copies a stored zip, giving every entry zip64 sizes (local and central) and a zip64 offset, data 64-aligned."""
    with zipfile.ZipFile(src) as z:
        items = [(i.filename, z.read(i.filename), i.CRC) for i in z.infolist()]
    out = bytearray()
    central = bytearray()
    for name, data, crc in items:
        nb = name.encode()
        offset = len(out)
        z64 = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        pad = (-(offset + 30 + len(nb) + len(z64) + 4)) % 64
        extra = z64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding field, as torch uses
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra))
        out += nb + extra + data
        cz64 = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(nb), len(cz64), 0, 0, 0, 0, 0xFFFFFFFF)
        central += nb + cz64
    cd_offset = len(out)
    out += central
    z64_end = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(items), len(items), len(central), cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64_end, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(dst, "wb") as f:
        f.write(out)
    with zipfile.ZipFile(dst) as z:  # Python's zipfile reads it back
        assert [(i.filename, z.read(i.filename)) for i in z.infolist()] == [(n, d) for n, d, _ in items]


# ---------------------------------------------------------------------------------------------------------------


def good_fixtures():
    # f32: model.state_dict() as is: an OrderedDict (with _metadata set by BUILD), transformer. prefixes, lm_head.weight
    # tied to (sharing the storage of) transformer.word_embeddings.weight.
    m32 = AutoModelForCausalLM.from_pretrained(TINY)
    sd32 = m32.state_dict()
    assert isinstance(sd32, collections.OrderedDict)
    assert sd32["lm_head.weight"].data_ptr() == sd32["transformer.word_embeddings.weight"].data_ptr()
    d = folder("f32", extra=["generation_config.json", *TOKENIZER_FILES])
    torch.save(sd32, os.path.join(d, "pytorch_model.bin"))
    check_same_logits(d, TINY)
    log(f"[f32] {len(sd32)} tensors, OrderedDict; logits == tiny-bloom")

    # f16: a plain dict with transformer. prefixes, as transformers 4's save_pretrained wrote (tied weights shared).
    m16 = AutoModelForCausalLM.from_pretrained(TINY_F16)
    sd16 = dict(m16.state_dict())
    d = folder("f16", config_from=TINY_F16)
    torch.save(sd16, os.path.join(d, "pytorch_model.bin"))
    check_same_logits(d, TINY_F16)
    log(f"[f16] {len(sd16)} tensors, plain dict; logits == tiny-bloom-f16")

    # zip64: f16's archive with zip64 sizes and offsets in every local and central header (what files > 4 GB need).
    d = folder("zip64", config_from=TINY_F16)
    rewrite_zip64(os.path.join(OUT, "f16", "pytorch_model.bin"), os.path.join(d, "pytorch_model.bin"))
    check_same_logits(d, TINY_F16)
    log("[zip64] f16 rewritten with zip64 records; torch.load and zipfile read it; logits == tiny-bloom-f16")

    # sharded: f32 in three dict shards + pytorch_model.bin.index.json, transformers 4's layout.
    d = folder("sharded")
    names = list(sd32)
    parts = [names[:10], names[10:20], names[20:]]
    weight_map, total = {}, 0
    for k, part in enumerate(parts):
        shard = f"pytorch_model-{k + 1:05d}-of-{len(parts):05d}.bin"
        torch.save({n: sd32[n] for n in part}, os.path.join(d, shard))
        for n in part:
            weight_map[n] = shard
            total += sd32[n].numel() * sd32[n].element_size()
    with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")
    check_same_logits(d, TINY)
    log(f"[sharded] {len(parts)} shards + index; logits == tiny-bloom")

    # dtypes: every storage type, views with offsets and strides, a Parameter, 0-d and empty tensors, a tied pair.
    # expected.safetensors holds each as a dense copy (the tied name too).
    base = torch.arange(24, dtype=torch.float32)
    tied = torch.linspace(-1, 1, 6, dtype=torch.float32).reshape(2, 3)
    sd = {
        "f64": torch.randn(3, 2, dtype=torch.float64),
        "f32": torch.randn(4, 3),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2, 2).bfloat16(),
        "i64": torch.tensor([-(2**62), -1, 0, 1, 2**62], dtype=torch.int64),
        "i32": torch.tensor([-(2**31), 7, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-32768, 5, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "view_offset": base[5:17].view(3, 4),  # storage offset 5 into the 24-element storage shared with the next two
        "view_strided": base[::3],  # stride 3: copied dense on load
        "view_transposed": base.view(4, 6).t(),  # non-contiguous 2-D
        "param": torch.nn.Parameter(torch.randn(3)),  # pickled with torch._utils._rebuild_parameter
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "tied_a": tied,
        "tied_b": tied,  # the same tensor under a second name: convert keeps tied_a only
    }
    d = folder("dtypes")
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, os.path.join(d, "expected.safetensors"))
    back = torch.load(os.path.join(d, "pytorch_model.bin"), weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    # The same state dict pickled with protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL).
    d4 = folder("dtypes-protocol4")
    torch.save(sd, os.path.join(d4, "pytorch_model.bin"), pickle_protocol=4)
    shutil.copy(os.path.join(d, "expected.safetensors"), d4)
    log(f"[dtypes] {len(sd)} tensors (protocol 2 and 4) + expected.safetensors")


def bad_fixtures():
    small = {"transformer.ln_f.weight": torch.ones(32), "transformer.ln_f.bias": torch.zeros(32)}

    # legacy: torch.save's pre-1.6 format (a bare pickle stream).
    d = folder("legacy")
    torch.save(small, os.path.join(d, "pytorch_model.bin"), _use_new_zipfile_serialization=False)
    with open(os.path.join(d, "pytorch_model.bin"), "rb") as f:
        assert f.read(2) == b"\x80\x02" and not zipfile.is_zipfile(os.path.join(d, "pytorch_model.bin"))
    log("[legacy] _use_new_zipfile_serialization=False")

    # truncated: a valid archive cut in the middle (no end of central directory).
    d = folder("truncated")
    buf = io.BytesIO()
    torch.save(small, buf)
    raw = buf.getvalue()
    with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    log(f"[truncated] {len(raw) // 2} of {len(raw)} bytes; torch.load: {torch_refuses(os.path.join(d, 'pytorch_model.bin'))}")

    # Hand-made archives: one good (to prove the layout is torch's), then the broken ones.
    s0 = Storage("0", torch.FloatStorage, 32)
    s1 = Storage("1", torch.FloatStorage, 32)
    state = {"transformer.ln_f.weight": Tensor(s0, 0, [32], [1]), "transformer.ln_f.bias": Tensor(s1, 0, [32], [1])}
    data = {"0": torch.ones(32).numpy().tobytes(), "1": torch.zeros(32).numpy().tobytes()}
    # unaligned: a good hand-made archive under another folder name, its float data at offsets not divisible by 4
    # (Python's zipfile does not align entries as torch.save does), so the reader must copy instead of viewing.
    d = folder("unaligned")
    path = os.path.join(d, "pytorch_model.bin")
    write_archive(path, torch_like_pickle(state), data, prefix="weights")
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        raw = f.read()
        offsets = [i.header_offset + 30 + struct.unpack("<HH", raw[i.header_offset + 26:i.header_offset + 30])[0]
                   + struct.unpack("<HH", raw[i.header_offset + 26:i.header_offset + 30])[1]
                   for i in z.infolist() if "/data/" in i.filename]
    assert all(o % 4 for o in offsets), offsets
    back = torch.load(path, weights_only=True)
    assert torch.equal(back["transformer.ln_f.weight"], torch.ones(32)) and torch.equal(back["transformer.ln_f.bias"], torch.zeros(32))
    log(f"[unaligned] folder 'weights/', data at offsets {offsets}; torch.load reads it")

    d = folder("missing-entry")
    write_archive(os.path.join(d, "pytorch_model.bin"), torch_like_pickle(state), data, omit={"1"})
    log(f"[missing-entry] no archive/data/1; torch.load: {torch_refuses(os.path.join(d, 'pytorch_model.bin'))}")

    # storage-too-short: a [4, 9] view (stride 9) needs 36 elements of a 32-element storage.
    d = folder("storage-too-short")
    bad = {"transformer.ln_f.weight": Tensor(s0, 0, [4, 9], [9, 1])}
    write_archive(os.path.join(d, "pytorch_model.bin"), torch_like_pickle(bad), data)
    log(f"[storage-too-short] size [4, 9] x stride [9, 1] on 32 elements; torch.load: "
        f"{torch_refuses(os.path.join(d, 'pytorch_model.bin'))}")

    # entry-size-mismatch: the persistent id declares 32 floats, the entry holds 16.
    d = folder("entry-size-mismatch")
    write_archive(os.path.join(d, "pytorch_model.bin"), torch_like_pickle(state), {"0": data["0"][:64], "1": data["1"]})
    log("[entry-size-mismatch] storage 0 declares 128 bytes, holds 64")


def evil_fixtures():
    """Each data.pkl, run by Python's pickle, calls its payload; each archive is otherwise torch.save-shaped."""

    def binunicode(s):
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def marker(name):
        return MARKER_PREFIX + name

    cases = {
        # GLOBAL os.system('touch marker'): the classic.
        "os-system": b"\x80\x02cos\nsystem\n" + binunicode(f"touch {marker('os-system')}") + b"\x85R.",
        # builtins.eval(...): protocol 2 writes Python 2 names, mapped back by fix_imports (__builtin__ -> builtins).
        "eval": b"\x80\x02c__builtin__\neval\n" + binunicode(f"open('{marker('eval')}', 'w').close()") + b"\x85R.",
        # getattr(__import__('os'), 'system')(...): no 'os' global at all, for filters that only look for names.
        "getattr": (b"\x80\x02c__builtin__\ngetattr\nc__builtin__\n__import__\n" + binunicode("os") + b"\x85R"
                    + binunicode("system") + b"\x86R" + binunicode(f"touch {marker('getattr')}") + b"\x85R."),
        # protocol 4: STACK_GLOBAL posix.system.
        "stack-global": (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94\x93\x94" + binunicode(f"touch {marker('stack-global')}")
                         + b"\x85R."),
        # INST: instantiates (calls) os.system with the marked arguments.
        "inst": b"\x80\x02(" + binunicode(f"touch {marker('inst')}") + b"ios\nsystem\n.",
    }
    for name, pkl in cases.items():
        m = marker(name)
        if os.path.exists(m):
            os.remove(m)
        pickle.loads(pkl)  # noqa: S301 — deliberately: prove the payload runs under Python's pickle
        assert os.path.exists(m), f"{name}: the payload did not run under Python"
        os.remove(m)
        d = folder(f"evil-{name}")
        write_archive(os.path.join(d, "pytorch_model.bin"), pkl, {})
        log(f"[evil-{name}] pickle.loads runs it (marker created, removed); torch.load(weights_only=True): "
            f"{torch_refuses(os.path.join(d, 'pytorch_model.bin'))}")

    # nested: a real state dict from torch.save whose second value runs os.system when unpickled (a trojaned model).
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker('nested')}",))

    d = folder("evil-nested")
    path = os.path.join(d, "pytorch_model.bin")
    torch.save({"transformer.ln_f.weight": torch.ones(32), "transformer.ln_f.bias": Payload()}, path)
    torch.load(path, weights_only=False)  # noqa: S614 — deliberately: prove it runs
    assert os.path.exists(marker("nested"))
    os.remove(marker("nested"))
    log(f"[evil-nested] torch.load(weights_only=False) runs it; weights_only=True: {torch_refuses(path)}")


README = """# test/fixtures/bin

Generated by `scripts/gen_fixtures_bin.py` (torch 2.13.0+cpu, transformers 5.17.0); do not edit by hand. Tests never
run Python. Every folder except `dtypes*` holds the tiny BLOOM's `config.json`.

Good (logits equal the safetensors fixture's in transformers, checked by the generator):
- `f32/`: `torch.save(model.state_dict())` of tiny-bloom: an OrderedDict (`_metadata` set by BUILD), `transformer.`
  prefixes, `lm_head.weight` sharing the embedding's storage; plus generation_config.json and the tokenizer files.
- `f16/`: tiny-bloom-f16's state dict as a plain dict (transformers 4's save_pretrained layout).
- `zip64/`: `f16/`'s archive rewritten with zip64 sizes/offsets in every header and 64-byte aligned data.
- `sharded/`: tiny-bloom in three `pytorch_model-0000k-of-00003.bin` shards + `pytorch_model.bin.index.json`.
- `dtypes/`, `dtypes-protocol4/`: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL, views with storage offset / stride /
  transposed, a Parameter, 0-d and empty tensors, a tied pair (`tied_b` is `tied_a`); pickle protocol 2 and 4;
  `expected.safetensors` holds each as a dense copy.

- `unaligned/`: a hand-made archive (folder `weights/`, Python's zipfile: no alignment, no data descriptors) holding
  `transformer.ln_f.weight` = ones(32) and `.bias` = zeros(32) at offsets not divisible by 4.

Refused:
- `legacy/`: `_use_new_zipfile_serialization=False` (pre-zip format).
- `truncated/`: a valid archive cut in half.
- `missing-entry/`: the pickle refers to storage `1`, `archive/data/1` is absent.
- `storage-too-short/`: a `[4, 9]` tensor with stride `[9, 1]` over a 32-element storage.
- `entry-size-mismatch/`: a storage declared as 32 floats whose entry holds 64 bytes.
- `evil-*/`: archives whose data.pkl calls `os.system` (GLOBAL), `builtins.eval`, `getattr(__import__('os'),
  'system')`, `posix.system` (STACK_GLOBAL, protocol 4), `os.system` through INST, and a torch.save'd state dict
  with an `os.system` value. Each payload creates `/tmp/peft-node-evil-<name>`; the generator checks that Python's
  pickle really runs it.
"""


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    good_fixtures()
    bad_fixtures()
    evil_fixtures()
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(README)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    log(f"wrote {OUT} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
