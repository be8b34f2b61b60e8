"""The Python side of `npm run bench`: HF transformers + PEFT prefix tuning on one config, printed as one JSON line.

  python bench/peft_bench.py MODEL_DIR BATCH_JSON SETTINGS_JSON
The timed train step is what HF Trainer does per update: forward with num_items_in_batch, backward, clip_grad_norm_,
AdamW (fused, HF's default optim), zero_grad.
"""
import json
import resource
import statistics
import sys
import time

import torch

model_dir, batch_file, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t_import = time.perf_counter()
from peft import PrefixTuningConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
import_s = time.perf_counter() - t_import

batch = json.load(open(batch_file))
ids = torch.tensor(batch["input_ids"])
mask = torch.tensor(batch["attention_mask"])
labels = torch.tensor(batch["labels"])
prompt = torch.tensor(batch["prompt"])

t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
load_s = time.perf_counter() - t0
torch.manual_seed(0)
pm = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=settings["num_virtual_tokens"],
                                              prefix_projection=settings["prefix_projection"]))
params = [p for p in pm.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=settings["learning_rate"], fused=True)
num_items = torch.tensor(int((labels[..., 1:] != -100).sum()))


def train_step():
    pm.train()
    loss = pm(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=num_items).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad()
    return loss.item()


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def forward():
    with torch.no_grad():
        return pm(input_ids=ids, attention_mask=mask, labels=labels).loss.item()


def generate():
    pm.eval()
    with torch.no_grad():
        out = pm.generate(input_ids=prompt, max_new_tokens=settings["gen_new"], min_new_tokens=settings["gen_new"],
                          do_sample=False)
    assert out.shape[1] == prompt.shape[1] + settings["gen_new"], out.shape


step_s = timed(train_step, settings["warmup"], settings["repeats"])
forward_s = timed(forward, 1, settings["repeats"])
gen_s = timed(generate, 1, 3)
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "side": "peft", "load_s": load_s, "import_s": import_s, "train_step_s": step_s, "forward_s": forward_s,
    "gen_tokens_per_s": settings["gen_new"] / gen_s, "peak_rss_mb": rss_kb / 1024, "threads": torch.get_num_threads(),
    "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                 "peft": __import__("peft").__version__},
}))
