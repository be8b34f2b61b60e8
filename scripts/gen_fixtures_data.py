#!/usr/bin/env python3
"""Generate the tokenizer / dataset / collator fixtures of peft-node (test/fixtures/data/).

How to run (from the repository root), with the environment of scripts/requirements-fixtures.txt plus
`datasets==5.0.1` (which needs fsspec<=2026.6.0; install it beside the others, e.g. with `pip install --target DIR
datasets==5.0.1` and `PYTHONPATH=DIR`):

    python scripts/gen_fixtures_data.py

It reads the BLOOM-style tokenizer that scripts/gen_fixtures.py made (test/fixtures/tokenizer/) and rewrites
test/fixtures/data/ only: small self-written input files (JSON, JSON Lines, split layouts, malformed files) and the
golden outputs of transformers / datasets / numpy for them. It is deterministic; the outputs are committed and the
Node tests never run Python.

Golden files:
  tokenizer_golden.json  encode/decode of extra strings (Unicode whitespace, BLOOM split-regex punctuation, special
                         tokens, emoji), tokenizer(...) calls with padding / truncation / tensors, tokenizer.pad(...)
                         calls, decode of ids outside the vocabulary, truncation with a template post-processor
  datasets_golden.json   load_dataset("json", ...) results, numpy default_rng(seed).permutation(n),
                         Dataset.shuffle / train_test_split selections, map() column orders
  collator_golden.json   the seed notebook's process_func over the sft rows, DataCollatorForSeq2Seq batches
                         (left / right padding, pad_to_multiple_of, padding="max_length"), and the pipeline
                         load_dataset -> map(process_func, remove_columns) -> collator
"""

import hashlib
import json
import os
import re
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="peft-node-datasets-"))  # no stale cache reuse

import numpy as np  # noqa: E402
import datasets  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset, load_dataset  # noqa: E402
from transformers import AutoTokenizer, DataCollatorForSeq2Seq  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK_DIR = "test/fixtures/tokenizer"
OUT = "test/fixtures/data"


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_json(path, obj):
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    # one line per list of numbers / nulls, so id lists stay readable
    text = re.sub(r"\[\s*((?:-?\d+|null)(?:,\s*(?:-?\d+|null))*)\s*\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)).replace(",", ", ") + "]", text)
    write_text(path, text + "\n")


def jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def tolist(v):
    return v.tolist() if hasattr(v, "tolist") else v


# --------------------------------------------------------------------------------------------------------------------
# Self-written input rows (alpaca style: instruction / input / output)
# --------------------------------------------------------------------------------------------------------------------
SFT_A = [  # sft/part-a.jsonl
    {"instruction": "把下面的句子翻译成英文。", "input": "今天天气很好。", "output": "The weather is nice today."},
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, yellow and blue."},
]
SFT_B = [  # sft/part-b.json
    {"instruction": "写一首关于月亮的短诗。", "input": "", "output": "月亮挂在天上，\n照亮回家的路。🌙"},
    {"instruction": "Compute the sum.", "input": "3 + 4 = ?", "output": "3 + 4 = 7"},
    {"instruction": "解释什么是机器学习，并举一个例子。", "input": "",
     "output": "机器学习是让计算机从数据中学习规律的方法。例如：根据过去的房价预测明天的房价。"},
]


def write_inputs():
    shutil.rmtree(OUT, ignore_errors=True)
    # data_dir with two files (sorted order: part-a.jsonl, part-b.json) plus files HF ignores.
    write_text(f"{OUT}/sft/part-a.jsonl", jsonl(SFT_A[:1]) + "\n" + jsonl(SFT_A[1:]).replace("\n", "\r\n"))
    write_text(f"{OUT}/sft/part-b.json", json.dumps(SFT_B, ensure_ascii=False, indent=2) + "\n")
    write_text(f"{OUT}/sft/README.md", "Ignored by load_dataset (FILES_TO_IGNORE).\n")
    write_text(f"{OUT}/sft/.hidden.json", json.dumps([{"instruction": "hidden", "input": "", "output": "x"}]) + "\n")
    # split names from file and folder names
    write_text(f"{OUT}/splits/train.jsonl", jsonl([{"x": 1, "s": "train"}]))
    write_text(f"{OUT}/splits/sub/training_more.json", json.dumps([{"x": 2, "s": "training_more"}]))
    write_text(f"{OUT}/splits/dev_v1.json", json.dumps([{"x": 3, "s": "dev_v1"}]))
    write_text(f"{OUT}/splits/my-test.json", json.dumps([{"x": 4, "s": "my-test"}, {"x": 5, "s": "my-test"}]))
    write_text(f"{OUT}/splits/__special__/train_cache.json", json.dumps([{"x": 6, "s": "ignored"}]))
    # schema inference: union of keys of the first file, nulls, a "text" column for arrays of strings, `field`
    write_text(f"{OUT}/schema/rows.jsonl", jsonl([{"a": 1, "b": "x"}, {"b": "y", "c": [1, 2]}, {"a": 3}]) + "\n\n")
    write_text(f"{OUT}/schema/subset.jsonl", jsonl([{"b": "z"}]))
    write_text(f"{OUT}/schema/extra.jsonl", jsonl([{"a": 4, "zz": True}]))
    write_text(f"{OUT}/schema/strings.json", json.dumps(["first", "second 第二"], ensure_ascii=False))
    write_text(f"{OUT}/schema/field.json", json.dumps({"version": 1, "data": [{"q": "a?", "n": 1.5}, {"q": "b?", "n": 2}]}, indent=2))
    write_text(f"{OUT}/schema/nested.json", json.dumps([{"id": 1, "meta": {"tags": ["a", "b"], "score": None}}]))
    # malformed files (the tests check the reported line and column)
    write_text(f"{OUT}/bad/array.json", '[\n  {"a": 1},\n  {"a": 2,}\n]\n')   # line 3 column 11: '}' where a name is due
    write_text(f"{OUT}/bad/lines.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3 "b": 4}\n')  # line 3 column 9: missing ','
    write_text(f"{OUT}/bad/unterminated.jsonl", '{"a": "ok"}\n{"a": "no end}\n')  # line 2 column 15: unterminated string
    write_text(f"{OUT}/bad/pretty_object.json", '{\n  "data": [{"a": 1}]\n}\n')  # one object: needs `field`


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------
EXTRA_TEXTS = [
    # Unicode whitespace that BLOOM's split regex `\s` does / does not cover (NBSP, ideographic space, NEL, line and
    # paragraph separators, vertical tab, form feed, ZWSP, BOM, information separators that Python's isspace knows)
    "a\u00a0b\u3000c\u2028d\u2029e\u0085f\u200bg\ufeffh\u000bi\u000cj\u001ck\u1680l\u202fm\u205fn\u2007o",
    # characters inside the regex's bracket expression `[^(\s|[.,!?…。，、।۔،])]`
    "(parens) [brackets] {braces} a|b c(d)e f)g|(h",
    "wait… 好。好，好、हिंदी। اردو۔ عربي، done!? yes.",
    "   leading and trailing   ",
    "\n\nstarts with newlines and ends with a space ",
    "cr\ronly and\r\r\ndouble",
    "x<s>y</s>z<pad><pad> <unk>w",
    "combining: e\u0301 n\u0303; ZWJ family 👨\u200d👩\u200d👧; flags 🇨🇳🇺🇸",
    "3.14159, -42, 1e10, $100 & 50% #tag @user ~`^_=+*/\\",
    "a , b . c ' d n't it 's ? !",
    "한국어 テスト ไทย ελληνικά",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Human: 写一首诗\n\nAssistant: 月亮</s>",
]

CALL_CASES = [
    # (texts, kwargs) — texts is a str or a list of str; kwargs are passed to tokenizer(...) as is
    (["你好", "Hello world! How are you?", ""], {"padding": True}),
    (["你好", "Hello world! How are you?"], {"padding": "longest", "pad_to_multiple_of": 8}),
    (["你好", "Hello world! How are you?"], {"padding": "max_length", "max_length": 12}),
    (["你好", "Hello world! How are you?"], {"padding": "max_length", "max_length": 5, "pad_to_multiple_of": 4}),
    (["你好", "Hello world! How are you?"], {"truncation": True, "max_length": 4}),
    (["你好", "Hello world! How are you?"], {"max_length": 4}),  # max_length alone turns truncation on
    (["你好", "Hello world! How are you?"], {"truncation": True, "max_length": 4, "padding": True}),
    (["你好", "Hello world! How are you?"], {"truncation": True, "max_length": 8, "padding": "max_length",
                                              "pad_to_multiple_of": 4}),
    (["你好", "Hello world! How are you?"], {"padding": True, "padding_side": "right"}),
    (["你好", "Hello world! How are you?"], {"padding": True, "max_length": 3}),  # padding=True ignores max_length
    (["你好", "Hello world! How are you?"], {"padding": True, "return_tensors": "pt"}),
    ("Hello world! How are you?", {"return_tensors": "pt"}),
    ("Hello world! How are you?", {"padding": "max_length", "max_length": 16}),
    ("Hello world! How are you?", {"truncation": True, "max_length": 0}),
    ("Hello world! How are you?", {"add_special_tokens": False, "truncation": "longest_first", "max_length": 5}),
]

PAD_CASES = [
    # (features, kwargs) for tokenizer.pad(...)
    ([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], {}),
    ([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}, {"input_ids": [8], "attention_mask": [1]}],
     {"pad_to_multiple_of": 4, "return_tensors": "pt"}),
    ([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], {"padding": "max_length", "max_length": 5}),
    ([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], {"padding": True, "padding_side": "right"}),
    ({"input_ids": [[5, 6, 7], [8]]}, {}),
    ({"input_ids": [5, 6, 7]}, {"padding": "max_length", "max_length": 5}),
    ([{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 0], "special_tokens_mask": [0, 0, 0]},
      {"input_ids": [8], "token_type_ids": [0], "special_tokens_mask": [0]}], {}),
]


def encode_case(tok, text):
    enc = tok(text)
    ids = enc["input_ids"]
    return {
        "text": text,
        "input_ids": ids,
        "tokens": tok.convert_ids_to_tokens(ids),
        "decoded": tok.decode(ids),
        "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
    }


def tokenizer_golden(tok):
    out = {
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "attributes": {
            "padding_side": tok.padding_side, "truncation_side": tok.truncation_side,
            "model_max_length": tok.model_max_length, "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
            "all_special_tokens": tok.all_special_tokens, "all_special_ids": tok.all_special_ids,
            "vocab_size": tok.vocab_size,
        },
        "encode": [encode_case(tok, t) for t in EXTRA_TEXTS],
        "calls": [],
        "pads": [],
        "decode_ids": [],
    }
    for texts, kwargs in CALL_CASES:
        enc = tok(texts, **kwargs)
        out["calls"].append({"text": texts, "kwargs": kwargs,
                             "input_ids": tolist(enc["input_ids"]), "attention_mask": tolist(enc["attention_mask"])})
    for feats, kwargs in PAD_CASES:
        res = tok.pad(json.loads(json.dumps(feats)), **kwargs)
        out["pads"].append({"features": feats, "kwargs": kwargs, "output": {k: tolist(v) for k, v in res.items()}})
    # ids past the tokenizer's vocabulary (the tiny model's vocab is 1000 > 995) are skipped by decode
    for ids in ([43, 999, 593], [994, 995, 1, 43, 2, 3], [3, 3, 43, 593, 2]):
        out["decode_ids"].append({"ids": ids, "decoded": tok.decode(ids),
                                  "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    # the pre-tokenizer alone (BLOOM's Split regex, then the byte-level mapping): piece boundaries decide which
    # merges can apply, so this checks the regex on texts whose ids alone would not show a wrong boundary
    with open(f"{REPO_ROOT}/test/fixtures/golden/tokenizer_cases.json", encoding="utf-8") as f:
        base_texts = [c["text"] for c in json.load(f)]
    out["pretokenize"] = [{"text": t, "pieces": [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(t)]}
                          for t in EXTRA_TEXTS + base_texts]
    out["batch_decode"] = {"ids": [[43, 593], [1, 43, 2]],
                           "decoded_skip_special": tok.batch_decode([[43, 593], [1, 43, 2]], skip_special_tokens=True)}
    for c in out["encode"]:
        if c["decoded"] != c["text"]:
            print(f"[tokenizer] note: decode(encode(x)) != x for {c['text']!r}: {c['decoded']!r}")
    return out


def template_tokenizer_golden():
    """The same BPE with a TemplateProcessing post-processor ("<s> $A </s>"): truncation keeps the special tokens."""
    d = f"{OUT}/tokenizer-template"
    os.makedirs(d, exist_ok=True)
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(f"{TOK_DIR}/{f}", f"{d}/{f}")
    with open(f"{TOK_DIR}/tokenizer.json", encoding="utf-8") as f:
        tj = json.load(f)
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "</s>", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                           "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}},
    }
    write_text(f"{d}/tokenizer.json", json.dumps(tj, ensure_ascii=False, indent=2) + "\n")
    tok = AutoTokenizer.from_pretrained(d)
    cases = []
    for texts, kwargs in [("Hello world! How are you?", {}),
                          ("Hello world! How are you?", {"add_special_tokens": False}),
                          (["Hello world! How are you?", "你好"], {"truncation": True, "max_length": 5, "padding": True}),
                          ("Hello world! How are you?", {"max_length": 2}),
                          ("Hello world! How are you?", {"add_special_tokens": False, "max_length": 2})]:
        enc = tok(texts, **kwargs)
        cases.append({"text": texts, "kwargs": kwargs, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return {"dir": d, "calls": cases}


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------
def load_summary(**kwargs):
    try:
        dd = load_dataset("json", **kwargs)
    except Exception as e:  # noqa: BLE001 - the golden records which loads fail
        return {"kwargs": kwargs, "error": type(e).__name__}
    if isinstance(dd, Dataset):
        return {"kwargs": kwargs, "dataset": {"column_names": dd.column_names, "rows": dd.to_list()}}
    return {"kwargs": kwargs,
            "splits": {k: {"column_names": v.column_names, "rows": v.to_list()} for k, v in dd.items()}}


def datasets_golden():
    out = {"versions": {"datasets": datasets.__version__, "numpy": np.__version__}, "loads": [], "permutations": []}
    base = os.path.abspath(OUT)
    loads = [
        dict(data_dir=f"{base}/sft"),
        dict(data_dir=f"{base}/sft", split="train"),
        dict(data_files=f"{base}/sft/part-b.json"),
        dict(data_files="part-*.json*", data_dir=f"{base}/sft"),
        dict(data_files={"train": f"{base}/sft/part-a.jsonl", "test": [f"{base}/sft/part-b.json"]}),
        dict(data_dir=f"{base}/splits"),
        dict(data_files=f"{base}/schema/rows.jsonl"),
        dict(data_files=[f"{base}/schema/rows.jsonl", f"{base}/schema/subset.jsonl"]),
        dict(data_files=[f"{base}/schema/rows.jsonl", f"{base}/schema/extra.jsonl"]),
        dict(data_files=f"{base}/schema/strings.json"),
        dict(data_files=f"{base}/schema/field.json", field="data"),
        dict(data_files=f"{base}/schema/nested.json"),
    ]
    for kw in loads:
        s = load_summary(**kw)
        # store paths relative to test/fixtures/data so the golden file does not depend on the checkout location
        s["kwargs"] = json.loads(json.dumps(s["kwargs"]).replace(base + "/", ""))
        out["loads"].append(s)

    for seed in (0, 1, 42, 1234, 2**32 + 5, 2**63 + 11):
        for n in (1, 2, 3, 10, 43, 100) + ((1000,) if seed in (0, 2**63 + 11) else ()):
            out["permutations"].append({"seed": str(seed), "n": n,
                                        "perm": np.random.default_rng(seed).permutation(n).tolist()})
    big = np.random.default_rng(42).permutation(51179).tolist()
    out["permutation_51179_seed42"] = {"head": big[:32], "tail": big[-32:],
                                       "sha256": hashlib.sha256(",".join(map(str, big)).encode()).hexdigest()}

    ds = load_dataset("json", data_dir=f"{base}/sft", split="train")
    out["shuffle"] = [{"seed": s, "instructions": list(ds.shuffle(seed=s)["instruction"])} for s in (0, 42, 7)]
    splits = []
    for kw in (dict(test_size=0.25, seed=42), dict(test_size=2, seed=42), dict(test_size=0.4, train_size=0.4, seed=3),
               dict(train_size=3, seed=0), dict(test_size=0.2, shuffle=False)):
        r = ds.train_test_split(**kw)
        splits.append({"kwargs": kw, "train": list(r["train"]["instruction"]), "test": list(r["test"]["instruction"])})
    out["train_test_split"] = splits

    small = Dataset.from_list([{"a": 1, "b": 2}, {"a": 3, "b": 4}])
    out["map_columns"] = [
        {"case": "remove a, return c and a", "column_names": small.map(lambda e: {"c": 0, "a": 9}, remove_columns=["a"]).column_names,
         "rows": small.map(lambda e: {"c": 0, "a": 9}, remove_columns=["a"]).to_list()},
        {"case": "remove a and b, return c and a", "column_names": small.map(lambda e: {"c": 0, "a": 9}, remove_columns=["a", "b"]).column_names},
        {"case": "return c, b, a", "column_names": small.map(lambda e: {"c": 0, "b": 9, "a": 5}).column_names},
        {"case": "return None with remove_columns", "rows": small.map(lambda e: None, remove_columns=["a"]).to_list()},
        {"case": "batched, remove all, 3 rows per batch", "rows": small.map(
            lambda b: {"n": [len(b["a"])] * 3}, batched=True, batch_size=1, remove_columns=["a", "b"]).to_list()},
        {"case": "with_indices", "rows": small.map(lambda e, i: {"i": i}, with_indices=True).to_list()},
    ]
    out["from_list_first_row_keys"] = Dataset.from_list([{"a": 1}, {"b": 2}]).to_list()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Collator
# --------------------------------------------------------------------------------------------------------------------
def make_process_func(tok, max_length):
    def process_func(example):  # the seed notebook's, with MAX_LENGTH as a parameter
        instruction = tok("\n".join(["Human: " + example["instruction"], example["input"]]).strip() + "\n\nAssistant: ")
        response = tok(example["output"] + tok.eos_token)
        input_ids = instruction["input_ids"] + response["input_ids"]
        attention_mask = instruction["attention_mask"] + response["attention_mask"]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"]
        if len(input_ids) > max_length:
            input_ids = input_ids[:max_length]
            attention_mask = attention_mask[:max_length]
            labels = labels[:max_length]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return process_func


def batch_json(b):
    return {k: (None if v is None else {"dtype": str(v.dtype).replace("torch.", ""), "value": v.tolist()}) for k, v in b.items()}


def collator_golden(tok):
    base = os.path.abspath(OUT)
    ds = load_dataset("json", data_dir=f"{base}/sft")["train"]
    out = {"versions": {"transformers": transformers.__version__, "datasets": datasets.__version__}, "pipelines": []}
    for max_length in (256, 24):
        tokenized = ds.map(make_process_func(tok, max_length), remove_columns=ds.column_names)
        feats = tokenized.to_list()
        lens = [len(f["input_ids"]) for f in feats]
        batches = []
        for name, kwargs, idx, side in [
            ("padding=True, left", {"padding": True}, [0, 1, 2], "left"),
            ("padding=True, pad_to_multiple_of=8, left", {"padding": True, "pad_to_multiple_of": 8}, [0, 1, 2], "left"),
            ("padding=True, right", {"padding": True}, [0, 1, 2], "right"),
            ("padding=max_length, left", {"padding": "max_length", "max_length": max(lens[3], lens[4]) + 5}, [3, 4], "left"),
            ("padding=True, one example", {"padding": True}, [4], "left"),
            ("label_pad_token_id=-1, left", {"padding": True, "label_pad_token_id": -1}, [1, 3], "left"),
        ]:
            tok.padding_side = side
            try:
                b = DataCollatorForSeq2Seq(tokenizer=tok, **kwargs)([feats[i] for i in idx])
                batches.append({"name": name, "kwargs": kwargs, "indices": idx, "padding_side": side, "batch": batch_json(b)})
            finally:
                tok.padding_side = "left"
        out["pipelines"].append({"max_length": max_length, "column_names": tokenized.column_names,
                                 "features": feats, "lengths": lens, "batches": batches})
    assert len(set(out["pipelines"][0]["lengths"][:3])) == 3, "rows 0..2 must differ in length"
    return out


def readme():
    return f"""# test/fixtures/data

Generated by `scripts/gen_fixtures_data.py` (see its docstring for how to run it). Do not edit by hand.

Versions: transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, datasets
{datasets.__version__}, numpy {np.__version__}, torch {torch.__version__}.

- `sft/`: 5 self-written alpaca-style rows (instruction / input / output) in `part-a.jsonl` (JSON Lines with a blank
  line and CRLF) and `part-b.json` (a JSON array), plus `README.md` and `.hidden.json`, which load_dataset skips.
- `splits/`: split names from file / folder names (`train.jsonl`, `sub/training_more.json`, `dev_v1.json`,
  `my-test.json`; `__special__/` skipped, as HF skips `__*` folders).
- `schema/`: column inference (missing keys → null, a new column in a later file → error, arrays of strings →
  "text", `field`, nested values).
- `bad/`: malformed JSON / JSON Lines for the error tests.
- `tokenizer-template/`: the fixture tokenizer with a TemplateProcessing post-processor (`<s> $A </s>`).
- `tokenizer_golden.json`, `datasets_golden.json`, `collator_golden.json`: Python's results (see the script).
"""


def main():
    os.chdir(REPO_ROOT)
    datasets.disable_progress_bars()
    write_inputs()
    tok = AutoTokenizer.from_pretrained(TOK_DIR)
    assert tok.padding_side == "left" and tok.pad_token_id == 3
    tg = tokenizer_golden(tok)
    tg["template"] = template_tokenizer_golden()
    write_json(f"{OUT}/tokenizer_golden.json", tg)
    write_json(f"{OUT}/datasets_golden.json", datasets_golden())
    write_json(f"{OUT}/collator_golden.json", collator_golden(tok))
    write_text(f"{OUT}/README.md", readme())
    print(f"wrote {OUT}/ with transformers {transformers.__version__}, datasets {datasets.__version__}, "
          f"numpy {np.__version__}")


if __name__ == "__main__":
    main()
