#!/usr/bin/env python3
"""Golden data from the REAL Hugging Face Trainer (transformers 5.17.0, peft 0.21.0, torch 2.13.0+cpu) for the TS port.

How to run (from the repository root, same environment as scripts/gen_fixtures.py, see
scripts/requirements-fixtures.txt; needs the committed test/fixtures/tiny-bloom and test/fixtures/tokenizer):

    .venv-fixtures/bin/python scripts/gen_fixtures_trainer.py

It rewrites test/fixtures/trainer/ (only that folder). Deterministic: fixed seeds, torch.set_num_threads(1),
torch.use_deterministic_algorithms(True), float32 CPU, no network, and a deterministic clock for the Trainer's timing
metrics (the module-level `time` of transformers.trainer / transformers.trainer_utils is replaced by a fake clock that
advances 2.5 s per call, so train_runtime == 2.5 and the *_per_second values are reproducible). Re-running it with the
pinned versions gives byte-identical files.

What it writes (test/fixtures/trainer/):
  dataset_raw.json            24 self-written zh/en {instruction,input,output} rows
  dataset.json                the same rows through the tutorial's process_func (MAX_LENGTH 64)
  dataset_seed.json           87 rows (raw + tokenized) for the seed-notebook settings run
  <run>.json                  settings, Trainer internals, per-update records, log_history, TrainOutput, replica check
  <run>.safetensors           param_init.<name>, param_final.<name>, param_after_update_<k>.<name>, grads of update 1
  training_args_defaults.json TrainingArguments().to_dict() (the defaults) and run_noproj's to_dict()
  checkpoint_trainer_state.json  trainer_state.json of checkpoint-8 of run_checkpoint (schema reference)
  randperm.json               torch.randperm(N, generator=Generator().manual_seed(s)) for a few (N, s)
  README.md                   this listing plus the file formats

It also replays every run with a small pure-PyTorch replica (the reference forward of scripts/gen_fixtures.py, the
AdamW formula of peft-reference.md §7.2, clip_grad_norm_, LambdaLR, the Trainer's loss/log bookkeeping) and records the
differences (bit-exact for the adamw_torch runs; the fused-AdamW runs only to a tolerance).
"""

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
import transformers.trainer as _hf_trainer_mod  # noqa: E402
import transformers.trainer_utils as _hf_trainer_utils_mod  # noqa: E402
import peft  # noqa: E402
import accelerate  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from peft import PrefixTuningConfig, get_peft_model  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import gen_fixtures as G  # noqa: E402  (reference forward `ref`; importing it runs nothing)
from fixture_cpu import write_made_on  # noqa: E402

FIX = "test/fixtures"
OUT = os.path.join(FIX, "trainer")
MODEL_DIR = os.path.join(FIX, "tiny-bloom")
TOK_DIR = os.path.join(FIX, "tokenizer")
MAX_LENGTH = 64
INIT_SEED = 42  # torch.manual_seed(INIT_SEED) right before get_peft_model

# --------------------------------------------------------------------------------------------------------------------
# Self-written instruction rows (zh/en, varied lengths; #17 has a long output so MAX_LENGTH truncation triggers).
# --------------------------------------------------------------------------------------------------------------------
RAW_ROWS = [
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
    {"instruction": "把这句话翻译成英文：", "input": "我喜欢下雨天。", "output": "I like rainy days."},
    {"instruction": "What is 7 plus 8?", "input": "", "output": "7 plus 8 is 15."},
    {"instruction": "写一个关于月亮的短句。", "input": "", "output": "月亮像一盏安静的灯。🌙"},
    {"instruction": "Name two colors.", "input": "", "output": "Red and blue."},
    {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"},
    {"instruction": "Summarize:", "input": "The cat slept all day and woke up at night to play.",
     "output": "A cat sleeps by day and plays at night."},
    {"instruction": "计算", "input": "12 × 3", "output": "36"},
    {"instruction": "Give one tip for sleeping well.", "input": "", "output": "Go to bed at the same time every day."},
    {"instruction": "用一个词形容夏天。", "input": "", "output": "炎热。☀️"},
    {"instruction": "Is 9 an even number?", "input": "", "output": "No, 9 is odd."},
    {"instruction": "列出三种动物。", "input": "", "output": "猫、狗和兔子。"},
    {"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
    {"instruction": "今天星期几？", "input": "昨天是星期二。", "output": "今天是星期三。"},
    {"instruction": "Write a haiku about rain.", "input": "",
     "output": "Soft rain on the roof,\nthe garden drinks slowly,\nfrogs begin to sing."},
    {"instruction": "把数字排序：", "input": "5, 2, 9, 1", "output": "1, 2, 5, 9。"},
    {"instruction": "What do bees make?", "input": "", "output": "Honey 🍯"},
    {"instruction": "请详细介绍一下如何在家里种番茄，包括选种、浇水、施肥和收获的每一个步骤。", "input": "",
     "output": "第一步，选择健康饱满的种子，泡水一夜。第二步，把种子种在松软的土里，每天早晚各浇一次水，"
               "保持土壤湿润但不要积水。第三步，每两周施一次有机肥。第四步，果实变红变软时就可以收获了。🍅"},
    {"instruction": "Translate to Chinese:", "input": "Good morning", "output": "早上好"},
    {"instruction": "2 的 10 次方是多少？", "input": "", "output": "1024。"},
    {"instruction": "Complete the sentence.", "input": "The sky is", "output": "The sky is blue today."},
    {"instruction": "你叫什么名字？", "input": "", "output": "我是一个测试用的小模型。"},
    {"instruction": "How many legs does a spider have?", "input": "", "output": "A spider has 8 legs."},
    {"instruction": "说一句鼓励的话。", "input": "", "output": "加油，你一定可以做到！💪"},
]

_EN_NUM = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
_ZH_NUM = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二"]
_WORDS = ["apple", "river", "cloud", "green", "music", "paper", "light", "tiger", "stone", "happy", "window"]


def seed_rows():
    """87 rows: the 24 above plus 63 generated from self-written templates (deterministic)."""
    rows = [dict(r) for r in RAW_ROWS]
    i = 0
    while len(rows) < 87:
        a, b = (7 * i + 3) % 40, (11 * i + 5) % 30
        k = i % 7
        if k == 0:
            rows.append({"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."})
        elif k == 1:
            c = b % 10
            rows.append({"instruction": f"计算 {a} 乘以 {c}。", "input": "", "output": f"{a} × {c} = {a * c}。"})
        elif k == 2:
            n = (i * 5) % 13
            rows.append({"instruction": "Write the number in English.", "input": str(n), "output": _EN_NUM[n]})
        elif k == 3:
            n = (i * 3) % 13
            rows.append({"instruction": "把数字写成中文：", "input": str(n), "output": _ZH_NUM[n] + "。"})
        elif k == 4:
            w = _WORDS[i % len(_WORDS)]
            rows.append({"instruction": "Repeat the word three times.", "input": w, "output": " ".join([w] * 3)})
        elif k == 5:
            w = _WORDS[(i * 2) % len(_WORDS)]
            rows.append({"instruction": "How many letters are in this word?", "input": w,
                         "output": f"The word {w} has {len(w)} letters."})
        else:
            rows.append({"instruction": f"{a} 和 {b} 哪个更大？", "input": "",
                         "output": f"{max(a, b)} 更大。" if a != b else "一样大。"})
        i += 1
    return rows


def process_func(tok, example):
    """The tutorial's process_func (design.md §1) with MAX_LENGTH truncation of all three lists."""
    instruction = tok("\n".join(["Human: " + example["instruction"], example["input"]]).strip() + "\n\nAssistant: ")
    response = tok(example["output"] + tok.eos_token)
    input_ids = instruction["input_ids"] + response["input_ids"]
    attention_mask = instruction["attention_mask"] + response["attention_mask"]
    labels = [-100] * len(instruction["input_ids"]) + response["input_ids"]
    if len(input_ids) > MAX_LENGTH:
        input_ids = input_ids[:MAX_LENGTH]
        attention_mask = attention_mask[:MAX_LENGTH]
        labels = labels[:MAX_LENGTH]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# --------------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------------
# disable_tqdm=False pins the default-verbosity behaviour (ProgressCallback). With disable_tqdm=True the PrinterCallback
# pops "total_flos" from the very dict that becomes TrainOutput.metrics (trainer_callback.py PrinterCallback.on_log).
COMMON = dict(report_to="none", use_cpu=True, dataloader_num_workers=0, save_strategy="no", disable_tqdm=False)
RUNS = [
    dict(name="run_noproj", proj=False, data="main", snap_every=True,
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=5e-3, max_steps=8,
                   logging_steps=1, seed=42, optim="adamw_torch")),
    dict(name="run_proj", proj=True, data="main", snap_every=True,
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=5e-3, max_steps=8,
                   logging_steps=1, seed=42, optim="adamw_torch")),
    dict(name="run_proj_fused", proj=True, data="main", snap_every=False,
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=5e-3, max_steps=8,
                   logging_steps=1, seed=42, optim="adamw_torch_fused")),
    # the seed notebook's settings (bs 1, GA 8, logging 10, 1 epoch, default lr 5e-5 and default optim) on 87 rows
    dict(name="run_seed_settings", proj=False, data="seed", snap_every=True,
         args=dict(per_device_train_batch_size=1, gradient_accumulation_steps=8, logging_steps=10, num_train_epochs=1)),
    # max_grad_norm 0.1, not 1.0: on this tiny model the pre-clip norms stay < 0.35 even at lr 0.5, so 1.0 never clips
    dict(name="run_clip_warmup", proj=True, data="main", snap_every=True,
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=0.5, max_grad_norm=0.1,
                   lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.1, max_steps=6, logging_steps=2,
                   logging_first_step=True, seed=42, optim="adamw_torch")),
    dict(name="run_checkpoint", proj=False, data="main", snap_every=False,
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=5e-3, max_steps=8,
                   logging_steps=1, seed=42, optim="adamw_torch", save_strategy="steps", save_steps=4,
                   save_total_limit=1)),
]


def log(*a):
    print(*a, flush=True)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def jsonable(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in (sorted(v) if isinstance(v, (set, frozenset)) else v)]
    if hasattr(v, "value") and isinstance(getattr(v, "value"), (str, int)):  # enums
        return v.value
    if isinstance(v, torch.Tensor):
        return v.tolist() if v.numel() <= 16 else f"<tensor {list(v.shape)} {v.dtype}>"
    return str(v)


class FakeClock:
    """Deterministic stand-in for the `time` module inside transformers.trainer / trainer_utils (2.5 s per call)."""

    def __init__(self, start=1_000_000.0, step=2.5):
        self.t, self.step, self.calls = start, step, 0

    def time(self):
        v = self.t
        self.t += self.step
        self.calls += 1
        return v

    def __getattr__(self, name):
        import time as _real_time
        return getattr(_real_time, name)


@contextlib.contextmanager
def fake_hf_clock():
    """The Trainer's timing metrics from a FakeClock while the block runs; yields the clock (its `calls` count)."""
    clock = FakeClock()
    saved_time = (_hf_trainer_mod.time, _hf_trainer_utils_mod.time)
    _hf_trainer_mod.time = clock
    _hf_trainer_utils_mod.time = clock
    try:
        yield clock
    finally:
        _hf_trainer_mod.time, _hf_trainer_utils_mod.time = saved_time


class LoggedDataset(torch.utils.data.Dataset):
    """Plain map-style dataset (like a datasets.Dataset row access) that records the order of index accesses."""

    def __init__(self, rows):
        self.rows = rows
        self.access = []

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.access.append(int(i))
        return dict(self.rows[i])


def trainable_of(pm):
    return [(n, p) for n, p in pm.named_parameters() if p.requires_grad]


class Recorder(TrainerCallback):
    def __init__(self, run, trainable, snap_every):
        self.run, self.trainable, self.snap_every = run, trainable, snap_every
        self.updates, self.tensors, self.events, self.snaps = [], {}, [], {}
        self.cur = None

    def on_step_begin(self, args, state, control, **kw):
        self.cur = {"update": state.global_step + 1, "micro_batches": []}
        self.events.append(f"step_begin gs={state.global_step}")

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
        self.cur["lr_per_group"] = [g["lr"] for g in optimizer.param_groups]
        self.cur["lr"] = optimizer.param_groups[0]["lr"]

    def on_step_end(self, args, state, control, model=None, **kw):
        u = state.global_step
        self.cur["global_step"] = u
        self.cur["epoch"] = state.epoch
        self.cur["grads_none_after_zero_grad"] = all(p.grad is None for _, p in self.trainable)
        self.updates.append(self.cur)
        self.snaps[u] = {n: p.detach().clone() for n, p in self.trainable}
        if self.snap_every:
            for n, p in self.trainable:
                self.tensors[f"param_after_update_{u}.{n}"] = p.detach().clone()
        self.events.append(f"step_end gs={u} should_log={control.should_log} should_save={control.should_save} "
                           f"should_training_stop={control.should_training_stop}")

    def on_log(self, args, state, control, logs=None, **kw):
        self.events.append(f"log gs={state.global_step} keys={list(logs)}")

    def on_save(self, args, state, control, **kw):
        d = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        listing = sorted(os.listdir(d))
        folders = sorted(x for x in os.listdir(args.output_dir) if x.startswith("checkpoint-"))
        self.events.append(f"save gs={state.global_step} files={listing} all_checkpoints={folders}")
        self.run.setdefault("checkpoints_at_save", []).append({
            "global_step": state.global_step, "folder": f"checkpoint-{state.global_step}", "files": listing,
            "checkpoint_folders_in_output_dir": sorted(
                x for x in os.listdir(args.output_dir) if x.startswith("checkpoint-")),
        })
        self.run.setdefault("_ckpt_dirs", []).append(d)

    def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
        dl = train_dataloader
        bsm = getattr(dl, "batch_sampler", None)
        smp = getattr(bsm, "sampler", None)
        self.run["trainer_internals"]["train_dataloader"] = {
            "type": type(dl).__name__,
            "len": len(dl),
            "batch_sampler": type(bsm).__name__,
            "sampler": type(smp).__name__,
            "sampler_initial_seed": getattr(smp, "initial_seed", None),
            "sampler_epoch_at_train_begin": getattr(smp, "epoch", None),
            "drop_last": getattr(bsm, "drop_last", None),
            "batch_size": getattr(bsm, "batch_size", None),
            "collate_fn": type(dl.collate_fn).__name__,
        }
        self.events.append(f"train_begin max_steps={state.max_steps} num_train_epochs={state.num_train_epochs}")

    def on_epoch_begin(self, args, state, control, **kw):
        self.events.append(f"epoch_begin epoch={state.epoch}")

    def on_epoch_end(self, args, state, control, **kw):
        self.events.append(f"epoch_end epoch={state.epoch} gs={state.global_step}")


def load_base():
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)


def describe_pt(obj, depth=0):
    """Keys/types of a torch.load()ed object (values only for small scalars)."""
    if isinstance(obj, dict):
        return {str(k): describe_pt(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) > 8 and depth > 0:
            return f"<{type(obj).__name__} len={len(obj)}>"
        return [describe_pt(v, depth + 1) for v in obj]
    if isinstance(obj, torch.Tensor):
        if obj.numel() == 1:
            return {"tensor": list(obj.shape), "dtype": str(obj.dtype).replace("torch.", ""), "value": obj.item()}
        return {"tensor": list(obj.shape), "dtype": str(obj.dtype).replace("torch.", "")}
    if isinstance(obj, np.ndarray):
        return {"ndarray": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    return f"<{type(obj).__name__}>"


def run_trainer(spec, tok, datasets, tmp_root):
    name = spec["name"]
    rows = datasets[spec["data"]]
    run = {"name": name}
    model = load_base()
    pcfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=spec["proj"])
    torch.manual_seed(INIT_SEED)
    pm = get_peft_model(model, pcfg)
    trainable = trainable_of(pm)
    init = {n: p.detach().clone() for n, p in trainable}

    out_dir = os.path.join(tmp_root, name)
    kwargs = {**COMMON, **spec["args"], "output_dir": out_dir}
    args = TrainingArguments(**kwargs)
    ds = LoggedDataset(rows)
    collator = DataCollatorForSeq2Seq(tokenizer=tok, padding=True)
    rec = Recorder(run, trainable, spec["snap_every"])
    trainer = Trainer(model=pm, args=args, train_dataset=ds, data_collator=collator, callbacks=[rec])

    # ---- instrumentation: wrap bound methods of this Trainer instance (the class is untouched) -------------------
    access_pos = [0]
    orig_training_step = trainer.training_step

    def training_step(model_, inputs, num_items_in_batch=None):
        B = int(inputs["input_ids"].shape[0])
        idx = ds.access[access_pos[0]:access_pos[0] + B]
        access_pos[0] += B
        loss = orig_training_step(model_, inputs, num_items_in_batch)
        lab = inputs["labels"]
        rec.cur["micro_batches"].append({
            "indices": idx,
            "shape": list(inputs["input_ids"].shape),
            "num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
            "num_items_in_batch_is_tensor": torch.is_tensor(num_items_in_batch),
            "labels_ne_ignore_all": int((lab != -100).sum()),
            "labels_ne_ignore_shifted": int((lab[..., 1:] != -100).sum()),
            "loss": loss.item(),
            "loss_dtype": str(loss.dtype).replace("torch.", ""),
        })
        return loss

    trainer.training_step = training_step
    orig_clip = trainer._clip_grad_norm

    def clip(model_):
        u = trainer.state.global_step + 1
        pre = {n: p.grad.detach().clone() for n, p in trainable if p.grad is not None}
        norm = orig_clip(model_)
        post = {n: p.grad.detach().clone() for n, p in trainable if p.grad is not None}
        coef = torch.clamp(trainer.args.max_grad_norm / (norm + 1e-6), max=1.0)
        rec.cur["grad_norm_preclip"] = norm.item()
        rec.cur["grad_norm_dtype"] = str(norm.dtype).replace("torch.", "")
        rec.cur["clip_coef"] = coef.item()
        rec.cur["clipped"] = bool(coef.item() < 1.0)
        rec.cur["grad_norm_postclip"] = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in post.values()])).item()
        first_clipped = rec.cur["clipped"] and not any(x.get("clipped") for x in rec.updates)
        if u == 1 or first_clipped:
            for n in pre:
                rec.tensors[f"grad_preclip_update_{u}.{n}"] = pre[n]
                rec.tensors[f"grad_postclip_update_{u}.{n}"] = post[n]
        return norm

    trainer._clip_grad_norm = clip

    # Trainer internals the port must mirror
    run["trainer_internals"] = {
        "model_accepts_loss_kwargs": bool(trainer.model_accepts_loss_kwargs),
        "loss_shifts_labels": bool(trainer._loss_shifts_labels),
        "label_names": trainer.label_names,
        "can_return_loss": bool(trainer.can_return_loss),
        "accelerator_gradient_accumulation_steps": trainer.accelerator.gradient_accumulation_steps,
        "accelerator_num_processes": trainer.accelerator.num_processes,
        "use_seedable_sampler": trainer.accelerator.dataloader_config.use_seedable_sampler,
        "torch_initial_seed_after_trainer_init": torch.random.initial_seed(),
        "model_config_use_cache_after_init": bool(pm.config.use_cache),
        "callbacks": [type(c).__name__ for c in trainer.callback_handler.callbacks],
        "num_parameters_exclude_embeddings": int(trainer.model.num_parameters(exclude_embeddings=True)),
        "main_input_name": getattr(trainer.model, "main_input_name", "input_ids"),
    }
    # probe of the 5.17 counting rule: a first label that is not -100 is NOT counted (labels[..., 1:])
    probe = [{"labels": torch.tensor([[5, 6, -100, 7], [-100, -100, 8, 9]])}]
    run["trainer_internals"]["num_items_probe"] = {
        "labels": probe[0]["labels"].tolist(),
        "num_items_in_batch": int(trainer._get_num_items_in_batch(probe, torch.device("cpu"))),
        "count_all_would_be": int((probe[0]["labels"] != -100).sum()),
        "count_shifted": int((probe[0]["labels"][..., 1:] != -100).sum()),
    }

    with fake_hf_clock() as clock:
        with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()):
            out = trainer.train()
    run["progress_callback_stdout"] = printed.getvalue().splitlines()

    final = {n: p.detach().clone() for n, p in trainable}
    opt = trainer.optimizer
    groups = []
    name_of = {id(p): n for n, p in trainable}
    for g in opt.param_groups:
        groups.append({k: jsonable(v) for k, v in g.items() if k != "params"} | {
            "params": [name_of[id(p)] for p in g["params"]]})
    opt_state_final = {}
    for n, p in trainable:
        st = opt.state.get(p, {})
        if st:
            opt_state_final[n] = {"step": float(st["step"])}
    tensors = {}
    for n in init:
        tensors[f"param_init.{n}"] = init[n]
        tensors[f"param_final.{n}"] = final[n]
        st = opt.state.get(dict(trainable)[n], {})
        if st and spec["name"] in ("run_noproj", "run_proj", "run_clip_warmup"):
            tensors[f"exp_avg_final.{n}"] = st["exp_avg"].detach().clone()
            tensors[f"exp_avg_sq_final.{n}"] = st["exp_avg_sq"].detach().clone()
    tensors.update(rec.tensors)

    sched = trainer.lr_scheduler
    run.update({
        "settings": {"prefix_projection": spec["proj"], "num_virtual_tokens": 4, "init_seed": INIT_SEED,
                     "dataset": "dataset_seed.json" if spec["data"] == "seed" else "dataset.json",
                     "num_rows": len(rows), "training_args_passed": {**COMMON, **spec["args"]}},
        "peft_config": {k: jsonable(v) for k, v in sorted(pm.peft_config["default"].to_dict().items())},
        "trainable_param_names": [n for n, _ in trainable],
        "trainable_param_shapes": {n: list(p.shape) for n, p in trainable},
        "optimizer": {"class": type(opt.optimizer if hasattr(opt, "optimizer") else opt).__name__,
                      "defaults": jsonable((opt.optimizer if hasattr(opt, "optimizer") else opt).defaults),
                      "param_groups": groups, "final_state_steps": opt_state_final},
        "scheduler": {"class": type(sched).__name__, "base_lrs": sched.base_lrs, "last_epoch": sched.last_epoch,
                      "lr_lambda_values": [sched.lr_lambdas[0](k) for k in range(trainer.state.max_steps + 1)]},
        "state": {"global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps,
                  "num_train_epochs": trainer.state.num_train_epochs, "epoch": trainer.state.epoch,
                  "logging_steps": trainer.state.logging_steps, "save_steps": trainer.state.save_steps,
                  "total_flos": trainer.state.total_flos, "train_batch_size": trainer.state.train_batch_size},
        "sample_access_order": list(ds.access),
        "updates": rec.updates,
        "callback_events": rec.events,
        "log_history": trainer.state.log_history,
        "train_output": {"global_step": out.global_step, "training_loss": out.training_loss,
                         "metrics": dict(out.metrics)},
        "fake_clock_calls": clock.calls,
    })
    run["_snaps"] = rec.snaps
    return run, tensors, trainer, pm, model, init, final, args


# --------------------------------------------------------------------------------------------------------------------
# Pure-PyTorch replica of Trainer.train() (the semantics documented in the run JSONs / README)
# --------------------------------------------------------------------------------------------------------------------
def mt_randperm(n, seed):
    """peft-reference.md Appendix B (MT19937 + Fisher-Yates as torch.randperm CPU does for small n)."""
    mt = [0] * 624
    mt[0] = seed & 0xFFFFFFFF
    for k in range(1, 624):
        mt[k] = (1812433253 * (mt[k - 1] ^ (mt[k - 1] >> 30)) + k) & 0xFFFFFFFF
    pos = [624]

    def u32():
        if pos[0] >= 624:
            for k in range(624):
                y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7FFFFFFF)
                mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            pos[0] = 0
        y = mt[pos[0]]
        pos[0] += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y & 0xFFFFFFFF

    r = list(range(n))
    for i in range(n - 1):
        z = u32() % (n - i)
        r[i], r[i + z] = r[i + z], r[i]
    return r


def collate_left(rows, pad_id):
    """DataCollatorForSeq2Seq(padding=True) with a left-padding tokenizer: ids<-pad, mask<-0, labels<- -100."""
    L = max(len(r["input_ids"]) for r in rows)
    ids = [[pad_id] * (L - len(r["input_ids"])) + r["input_ids"] for r in rows]
    mask = [[0] * (L - len(r["attention_mask"])) + r["attention_mask"] for r in rows]
    Ll = max(len(r["labels"]) for r in rows)
    labels = [[-100] * (Ll - len(r["labels"])) + r["labels"] for r in rows]
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)


FORBIDDEN = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def is_decay(name):
    return not any(re.search(p, name.lower()) for p in FORBIDDEN)


def lr_lambda(kind, step, warmup, total):
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if kind == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    if kind == "cosine":
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(0.5) * 2.0 * progress)))
    raise ValueError(kind)


def replica(spec, rows, base_model, init, pad_id, nparams_nonemb):
    a = {"learning_rate": 5e-5, "weight_decay": 0.0, "max_grad_norm": 1.0, "lr_scheduler_type": "linear",
         "warmup_steps": 0, "max_steps": -1, "num_train_epochs": 3.0, "logging_first_step": False, "seed": 42,
         "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "per_device_train_batch_size": 8,
         "gradient_accumulation_steps": 1, "logging_steps": 500}
    a.update(spec["args"])
    bs, GA = a["per_device_train_batch_size"], a["gradient_accumulation_steps"]
    N = len(rows)
    len_dl = math.ceil(N / bs)  # drop_last False
    U = max(len_dl // GA + int(len_dl % GA > 0), 1)
    if a["max_steps"] > 0:
        max_steps = a["max_steps"]
        n_epochs = max_steps // U + int(max_steps % U > 0)
        num_train_samples = max_steps * bs * GA
    else:
        max_steps = math.ceil(a["num_train_epochs"] * U)
        n_epochs = math.ceil(a["num_train_epochs"])
        num_train_samples = N * a["num_train_epochs"]
    warm = int(a["warmup_steps"]) if a["warmup_steps"] >= 1 else math.ceil(max_steps * a["warmup_steps"])
    sd = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    cfg = base_model.config
    P = 4
    pre = "prompt_encoder.default."
    params = {n: t.clone().requires_grad_(True) for n, t in init.items()}
    order = list(params)  # == named_parameters() order == model.parameters() order of the grads
    m = {n: torch.zeros_like(t) for n, t in params.items()}
    v = {n: torch.zeros_like(t) for n, t in params.items()}
    steps = {n: 0 for n in params}
    b1, b2, eps, base_lr = a["adam_beta1"], a["adam_beta2"], a["adam_epsilon"], a["learning_rate"]

    def forward(ids, mask, labels, num_items):
        if spec["proj"]:
            def enc(toks):
                e = F.embedding(toks, params[pre + "embedding.weight"])
                h = torch.tanh(F.linear(e, params[pre + "transform.0.weight"], params[pre + "transform.0.bias"]))
                return F.linear(h, params[pre + "transform.2.weight"], params[pre + "transform.2.bias"])
            return G.ref(sd, None, ids, mask, labels, cfg, P, num_items=num_items, enc=enc)[1]
        return G.ref(sd, params[pre + "embedding.weight"], ids, mask, labels, cfg, P, num_items=num_items)[1]

    gs, last_logged = 0, 0
    tr_loss = torch.tensor(0.0)  # float32 accumulator, like Trainer._tr_loss
    total_loss_scalar = 0.0
    total_flos = 0.0
    log_history, updates = [], []
    snaps = {}
    done = False
    for epoch in range(n_epochs):
        perm = mt_randperm(N, a["seed"] + epoch)
        batches = [perm[i:i + bs] for i in range(0, N, bs)]
        steps_in_epoch = len(batches)
        rem = steps_in_epoch % GA or GA
        step = -1
        for u in range(U):
            nb = GA if u != U - 1 else rem
            window = batches[u * GA: u * GA + nb]
            coll = [collate_left([rows[i] for i in b], pad_id) for b in window]
            num_items = sum((lab[..., 1:] != -100).sum() for _, _, lab in coll)  # int64 0-dim tensor
            rec = {"update": gs + 1, "micro_batches": []}
            for b, (ids, mask, lab) in zip(window, coll):
                step += 1
                loss = forward(ids, mask, lab, num_items)
                loss.backward()
                lv = loss.detach()
                if torch.isnan(lv) or torch.isinf(lv):
                    tr_loss += tr_loss / (1 + gs - last_logged)
                else:
                    tr_loss += lv
                total_flos += float(6 * ids.numel() * nparams_nonemb)
                rec["micro_batches"].append({"indices": b, "num_items_in_batch": int(num_items), "loss": lv.item()})
            # clip_grad_norm_(max_norm) -> pre-clip total norm
            with torch.no_grad():
                grads = [params[n].grad for n in order if params[n].grad is not None]
                norms = [torch.linalg.vector_norm(g, 2.0) for g in grads]
                total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
                coef = torch.clamp(a["max_grad_norm"] / (total + 1e-6), max=1.0)
                for g in grads:
                    g.mul_(coef)
                lr = base_lr * lr_lambda(a["lr_scheduler_type"], gs, warm, max_steps)
                # AdamW (torch single-tensor path, decoupled weight decay)
                for n in order:
                    p, g = params[n], params[n].grad
                    if g is None:
                        continue
                    wd = a["weight_decay"] if is_decay(n) else 0.0
                    steps[n] += 1
                    if wd != 0:
                        p.mul_(1 - lr * wd)
                    m[n].lerp_(g, 1 - b1)
                    v[n].mul_(b2).addcmul_(g, g, value=1 - b2)
                    bc1 = 1 - b1 ** steps[n]
                    bc2 = 1 - b2 ** steps[n]
                    step_size = lr / bc1
                    bc2_sqrt = bc2 ** 0.5
                    denom = (v[n].sqrt() / bc2_sqrt).add_(eps)
                    p.addcdiv_(m[n], denom, value=-step_size)
                for n in order:
                    params[n].grad = None
            gs += 1
            ep = epoch + (step + 1) / steps_in_epoch
            rec.update({"grad_norm_preclip": total.item(), "clip_coef": coef.item(), "lr": lr, "epoch": ep})
            updates.append(rec)
            snaps[gs] = {n: t.detach().clone() for n, t in params.items()}
            if (gs == 1 and a["logging_first_step"]) or gs % a["logging_steps"] == 0:
                s = tr_loss.item()
                tr_loss -= tr_loss
                log_history.append({"loss": s / (gs - last_logged), "grad_norm": total.item(), "learning_rate": lr,
                                    "epoch": ep, "step": gs})
                total_loss_scalar += s
                last_logged = gs
            if gs >= max_steps:
                done = True
                break
        if done:
            break
    total_loss_scalar += tr_loss.item()
    train_loss = total_loss_scalar / max(gs, 0.001)
    return {"updates": updates, "log_history": log_history, "train_loss": train_loss, "global_step": gs,
            "total_flos": total_flos, "num_train_samples": num_train_samples, "max_steps": max_steps,
            "num_train_epochs": n_epochs, "final": {n: t.detach().clone() for n, t in params.items()},
            "snaps": snaps, "exp_avg": m, "exp_avg_sq": v}


def compare_replica(run, tensors, rep, init):
    d = {}

    def maxdiff(x, y):
        return (x.double() - y.double()).abs().max().item()

    fin = {n: tensors[f"param_final.{n}"] for n in init}
    d["final_params_bitexact"] = all(torch.equal(rep["final"][n], fin[n]) for n in fin)
    d["final_params_max_abs_diff"] = max(maxdiff(rep["final"][n], fin[n]) for n in fin)
    snap_keys = [k for k in tensors if k.startswith("param_after_update_")]
    if snap_keys:
        per = []
        for u, snap in rep["snaps"].items():
            per.append(max(maxdiff(snap[n], tensors[f"param_after_update_{u}.{n}"]) for n in snap))
        d["params_after_each_update_max_abs_diff"] = per
    if any(k.startswith("exp_avg_final.") for k in tensors):
        d["exp_avg_bitexact"] = all(torch.equal(rep["exp_avg"][n], tensors[f"exp_avg_final.{n}"]) for n in init)
        d["exp_avg_sq_bitexact"] = all(torch.equal(rep["exp_avg_sq"][n], tensors[f"exp_avg_sq_final.{n}"])
                                       for n in init)
    ru, tu = rep["updates"], run["updates"]
    d["num_updates_equal"] = len(ru) == len(tu)
    d["sample_order_equal"] = [mb["indices"] for x in ru for mb in x["micro_batches"]] == \
        [mb["indices"] for x in tu for mb in x["micro_batches"]]
    d["num_items_equal"] = [mb["num_items_in_batch"] for x in ru for mb in x["micro_batches"]] == \
        [mb["num_items_in_batch"] for x in tu for mb in x["micro_batches"]]
    rl = [mb["loss"] for x in ru for mb in x["micro_batches"]]
    tl = [mb["loss"] for x in tu for mb in x["micro_batches"]]
    d["micro_losses_bitexact"] = rl == tl
    d["micro_losses_max_abs_diff"] = max(abs(p - q) for p, q in zip(rl, tl))
    d["grad_norms_bitexact"] = [x["grad_norm_preclip"] for x in ru] == [x["grad_norm_preclip"] for x in tu]
    d["grad_norms_max_abs_diff"] = max(abs(x["grad_norm_preclip"] - y["grad_norm_preclip"]) for x, y in zip(ru, tu))
    d["lrs_equal"] = [x["lr"] for x in ru] == [x["lr"] for x in tu]
    d["epochs_equal"] = [x["epoch"] for x in ru] == [x["epoch"] for x in tu]
    hist = [e for e in run["log_history"] if "loss" in e]
    d["log_history_steps_equal"] = [e["step"] for e in hist] == [e["step"] for e in rep["log_history"]]
    d["log_history_bitexact"] = hist == rep["log_history"]
    d["log_loss_max_abs_diff"] = max(abs(e["loss"] - r["loss"]) for e, r in zip(hist, rep["log_history"]))
    d["train_loss_bitexact"] = rep["train_loss"] == run["train_output"]["training_loss"]
    d["train_loss_abs_diff"] = abs(rep["train_loss"] - run["train_output"]["training_loss"])
    d["total_flos_equal"] = rep["total_flos"] == run["train_output"]["metrics"]["total_flos"]
    d["global_step_equal"] = rep["global_step"] == run["train_output"]["global_step"]
    d["max_steps_equal"] = rep["max_steps"] == run["state"]["max_steps"]
    d["num_train_epochs_equal"] = rep["num_train_epochs"] == run["state"]["num_train_epochs"]
    m = run["train_output"]["metrics"]
    d["train_samples_per_second_formula_ok"] = m["train_samples_per_second"] == round(
        rep["num_train_samples"] / m["train_runtime"], 3)
    d["train_steps_per_second_formula_ok"] = m["train_steps_per_second"] == round(
        rep["max_steps"] / m["train_runtime"], 3)
    d["num_train_samples"] = rep["num_train_samples"]
    return d


# --------------------------------------------------------------------------------------------------------------------
def main():
    os.chdir(REPO_ROOT)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    # the defaults, before the verbosity is changed (disable_tqdm's default depends on the logger level)
    defaults = TrainingArguments().to_dict()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    log(f"versions: torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} "
        f"accelerate {accelerate.__version__}")

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    tok = AutoTokenizer.from_pretrained(TOK_DIR)
    assert tok.padding_side == "left" and tok.pad_token_id == 3 and tok.eos_token == "</s>"
    main_rows = [process_func(tok, r) for r in RAW_ROWS]
    seed_raw = seed_rows()
    seed_tok = [process_func(tok, r) for r in seed_raw]
    assert len(main_rows) == 24 and len(seed_tok) == 87
    lens = [len(r["input_ids"]) for r in main_rows]
    assert max(lens) == MAX_LENGTH and len(set(lens)) > 10, lens
    assert all(r["labels"][0] == -100 for r in main_rows + seed_tok)
    log(f"[data] main lengths {lens}; seed lengths min {min(len(r['input_ids']) for r in seed_tok)} "
        f"max {max(len(r['input_ids']) for r in seed_tok)}")
    write_json(os.path.join(OUT, "dataset_raw.json"), RAW_ROWS)
    write_json(os.path.join(OUT, "dataset.json"), main_rows)
    write_json(os.path.join(OUT, "dataset_seed.json"), {"raw": seed_raw, "tokenized": seed_tok})
    datasets = {"main": main_rows, "seed": seed_tok}

    # randperm
    rp = []
    for n, s in [(43, 42), (24, 42), (24, 43), (87, 42), (1000, 7)]:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(s)).tolist()
        assert perm == mt_randperm(n, s), (n, s)
        rp.append({"n": n, "seed": s, "perm": perm})
    write_json(os.path.join(OUT, "randperm.json"), rp)
    log("[randperm] torch.randperm == Appendix B MT19937 algorithm for all cases")

    summary = {}
    results = {}
    with tempfile.TemporaryDirectory(prefix="peft-node-trainer-") as tmp_root:
        for spec in RUNS:
            name = spec["name"]
            run, tensors, trainer, pm, base, init, final, args = run_trainer(spec, tok, datasets, tmp_root)
            if name == "run_noproj":
                ad = args.to_dict()
                ad["output_dir"] = "<tmp>/run_noproj"
                write_json(os.path.join(OUT, "training_args_defaults.json"), {
                    "note": "defaults = TrainingArguments().to_dict() with transformers "
                            f"{transformers.__version__} / torch {torch.__version__} (optim default is "
                            "adamw_torch_fused because torch >= 2.8; disable_tqdm's default is "
                            "logger.getEffectiveLevel() > WARN, i.e. False at the default verbosity); "
                            "run_noproj = the to_dict() of run_noproj's TrainingArguments (output_dir replaced).",
                    "defaults": jsonable(defaults),
                    "run_noproj": jsonable(ad),
                })
            if name == "run_checkpoint":
                ck = os.path.join(args.output_dir, "checkpoint-8")
                run["output_dir_final_listing"] = sorted(os.listdir(args.output_dir))
                run["checkpoint_8_files"] = sorted(os.listdir(ck))
                shutil.copyfile(os.path.join(ck, "trainer_state.json"),
                                os.path.join(OUT, "checkpoint_trainer_state.json"))
                with open(os.path.join(ck, "trainer_state.json"), encoding="utf-8") as f:
                    ts = json.load(f)
                run["trainer_state_json_keys"] = sorted(ts)
                run["checkpoint_contents"] = {
                    "optimizer.pt": describe_pt(torch.load(os.path.join(ck, "optimizer.pt"), weights_only=False)),
                    "scheduler.pt": describe_pt(torch.load(os.path.join(ck, "scheduler.pt"), weights_only=False)),
                    "rng_state.pth": describe_pt(torch.load(os.path.join(ck, "rng_state.pth"), weights_only=False)),
                }
                with open(os.path.join(ck, "adapter_config.json"), encoding="utf-8") as f:
                    run["checkpoint_adapter_config"] = json.load(f)
                from safetensors import safe_open
                with safe_open(os.path.join(ck, "adapter_model.safetensors"), "pt") as f:
                    run["checkpoint_adapter_keys"] = {k: list(f.get_tensor(k).shape) for k in f.keys()}
                    saved_pe = f.get_tensor("prompt_embeddings")
                run["checkpoint_prompt_embeddings_equal_final_embedding"] = bool(
                    torch.equal(saved_pe, final["prompt_encoder.default.embedding.weight"]))
                run.pop("_ckpt_dirs", None)
                # saving must not perturb training: same numbers as run_noproj
                ref_final = results["run_noproj"]["final"]
                run["final_params_equal_run_noproj"] = all(torch.equal(final[n], ref_final[n]) for n in final)
                run["log_history_losses_equal_run_noproj"] = [e.get("loss") for e in run["log_history"]] == [
                    e.get("loss") for e in results["run_noproj"]["run"]["log_history"]]
            # replica
            nparams = run["trainer_internals"]["num_parameters_exclude_embeddings"]
            rep = replica(spec, datasets[spec["data"]], base, init, tok.pad_token_id, nparams)
            cmp = compare_replica(run, tensors, rep, init)
            if spec["args"].get("optim", "adamw_torch_fused") == "adamw_torch_fused":
                cmp["note"] = ("the Trainer ran torch.optim.AdamW(fused=True) (CPU fused kernel); the replica uses the "
                               "non-fused single-tensor formula, so only tolerance agreement is expected")
            run["replica_vs_trainer"] = cmp
            results[name] = {"run": run, "final": final, "snaps": run.pop("_snaps")}
            summary[name] = cmp
            bad = [k for k, val in cmp.items() if val is False]
            log(f"[{name}] global_step={run['train_output']['global_step']} "
                f"train_loss={run['train_output']['training_loss']!r} clipped="
                f"{[u['update'] for u in run['updates'] if u.get('clipped')]} | replica: "
                f"final bitexact={cmp['final_params_bitexact']} maxdiff={cmp['final_params_max_abs_diff']:.3g} "
                f"log bitexact={cmp['log_history_bitexact']} micro-loss bitexact={cmp['micro_losses_bitexact']} "
                f"FALSE: {bad}")
            for k in list(tensors):
                tensors[k] = tensors[k].to(torch.float32).contiguous()
            save_file(tensors, os.path.join(OUT, f"{name}.safetensors"), metadata={"format": "pt"})
            run["tensors"] = {k: list(t.shape) for k, t in tensors.items()}
            run["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                               "peft": peft.__version__, "accelerate": accelerate.__version__}
            write_json(os.path.join(OUT, f"{name}.json"), jsonable(run))

    # fused vs non-fused (same data, same init, same everything but the optimizer kernel)
    a, b = results["run_proj"], results["run_proj_fused"]
    fvn = {
        "final_params_max_abs_diff": max((a["final"][n].double() - b["final"][n].double()).abs().max().item()
                                         for n in a["final"]),
        "final_params_bitexact": all(torch.equal(a["final"][n], b["final"][n]) for n in a["final"]),
        "micro_losses_max_abs_diff": max(
            abs(x["loss"] - y["loss"]) for ua, ub in zip(a["run"]["updates"], b["run"]["updates"])
            for x, y in zip(ua["micro_batches"], ub["micro_batches"])),
        "first_update_with_loss_difference": next(
            (ua["update"] for ua, ub in zip(a["run"]["updates"], b["run"]["updates"])
             if [x["loss"] for x in ua["micro_batches"]] != [y["loss"] for y in ub["micro_batches"]]), None),
        "train_loss_abs_diff": abs(a["run"]["train_output"]["training_loss"] -
                                   b["run"]["train_output"]["training_loss"]),
        "per_update_param_max_abs_diff": [
            max((a["snaps"][u][n].double() - b["snaps"][u][n].double()).abs().max().item() for n in a["final"])
            for u in sorted(a["snaps"])],
        "per_update_log_loss_abs_diff": [abs(x["loss"] - y["loss"]) for x, y in zip(
            a["run"]["log_history"], b["run"]["log_history"]) if "loss" in x],
    }
    summary["fused_vs_nonfused_run_proj"] = fvn
    log(f"[fused vs non-fused] {fvn}")
    write_json(os.path.join(OUT, "summary.json"), summary)
    write_made_on(OUT)
    with open(os.path.join(OUT, "README.md"), "w", encoding="utf-8") as f:
        f.write(README)
    total = sum(os.path.getsize(os.path.join(OUT, x)) for x in os.listdir(OUT))
    log(f"total size of {OUT}: {total} bytes")
    return 0


README = """# test/fixtures/trainer

Generated by `scripts/gen_fixtures_trainer.py` with the real `transformers.Trainer` (5.17.0) + peft 0.21.0 +
torch 2.13.0+cpu on `tiny-bloom` (fp32 CPU, 1 thread). Do not edit by hand; re-run the script (see its header).

- `dataset_raw.json` / `dataset.json`: 24 self-written zh/en rows and their `process_func` output
  (`Human: ...\\n\\nAssistant: ` prompt, eos appended, labels -100 on the prompt, truncated to 64 tokens).
- `dataset_seed.json`: `{raw, tokenized}` 87 rows for `run_seed_settings` (87 = 10*8 + 7: 11 updates, last window 7).
- `<run>.json`: `settings` (TrainingArguments passed), `trainer_internals`, `optimizer` (param groups incl. decay
  split), `scheduler` (`lr_lambda_values[k]` = factor for update k, 0-based), `state`, `sample_access_order`,
  `updates[]` (per optimizer update: `micro_batches[]` with dataset `indices`, `num_items_in_batch`, the micro-batch
  `loss` the backward was called on; `grad_norm_preclip`, `clip_coef`, `clipped`, `lr` used by that update, `epoch`),
  `log_history` (exact `trainer.state.log_history`), `train_output` (`TrainOutput`), `callback_events`,
  `replica_vs_trainer`. Timing values come from a deterministic fake clock (2.5 s per `time.time()` call).
- `<run>.safetensors` (F32): `param_init.<name>`, `param_final.<name>`, `param_after_update_<k>.<name>` (k = 1-based
  global step; not for `run_proj_fused` / `run_checkpoint`), `grad_preclip_update_<k>.<name>` /
  `grad_postclip_update_<k>.<name>` for update 1 and the first clipped update, `exp_avg_final.<name>` /
  `exp_avg_sq_final.<name>` (run_noproj, run_proj, run_clip_warmup).
- Runs: `run_noproj`, `run_proj` (bs 2, GA 2, lr 5e-3, max_steps 8, logging 1, adamw_torch), `run_proj_fused` (same,
  adamw_torch_fused), `run_seed_settings` (bs 1, GA 8, logging 10, 1 epoch, default lr/optim, 87 rows),
  `run_clip_warmup` (projection, lr 0.5, cosine, warmup 2, wd 0.1, max_steps 6, logging 2 + first step),
  `run_checkpoint` (= run_noproj + save_steps 4, save_total_limit 1).
- `training_args_defaults.json`: `TrainingArguments().to_dict()` and run_noproj's `to_dict()`.
- `checkpoint_trainer_state.json`: `checkpoint-8/trainer_state.json` of `run_checkpoint`.
- `randperm.json`: `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`.
- `summary.json`: replica-vs-Trainer comparison of every run, fused-vs-non-fused differences.

Semantics the replica in the script reproduces bit-exactly (adamw_torch runs; line numbers: transformers 5.17.0
`trainer.py` unless noted):
- order: epoch e iterates `torch.randperm(N, Generator().manual_seed(seed + e))` (data_seed overrides seed), chunked
  into micro-batches of `per_device_train_batch_size` (last one smaller, drop_last False); an update takes GA
  micro-batches, the last update of an epoch takes the remainder (`len_dataloader % GA`, 1798-1811).
- `num_items_in_batch` = sum over the update's micro-batches of `(labels[..., 1:] != -100).sum()` (2249-2261); every
  micro-batch loss is `CE_sum / num_items_in_batch` and is back-propagated as is (no division by GA).
- clip: `clip_grad_norm_(params, max_grad_norm)`; the logged `grad_norm` is the pre-clip norm of the last update of
  the logging window; then `optimizer.step()`, the LR of that step is logged, `lr_scheduler.step()`, `zero_grad()`
  (1860-1881).
- logged `loss` = (float32 sum of the window's micro-batch losses) / (updates since the last log); no rounding in 5.17;
  `train_loss` = (double sum of the logged float32 window sums + the unlogged float32 remainder) / global_step.
- `epoch` = epoch_index + (micro-batches consumed in this epoch) / len_dataloader (1881), unrounded.
"""

if __name__ == "__main__":
    sys.exit(main())
