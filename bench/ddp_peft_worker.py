"""The Python side of `npm run bench:ddp`: one full HF Trainer run (transformers + PEFT prefix tuning, adamw_torch,
save_strategy 'no'), one process per rank. Started by bench/ddp.js under `python -m torch.distributed.run
--nproc-per-node N` (ddp_backend='gloo': accelerate MULTI_CPU + torch DistributedDataParallel) or as a plain process
(no ddp_backend: accelerate 1.15 fails on ddp_backend='gloo' outside torchrun). Mirrors bench/ddp_node_worker.js.

  python bench/ddp_peft_worker.py MODEL_DIR DATASET_JSON SETTINGS_JSON OUT_DIR

Each rank writes OUT_DIR/rank-<RANK>.json: on_step_end timestamps (seconds since on_train_begin) and, per step, the
time in training_step (forward + backward, DDP's gradient all-reduce included: it runs inside backward), from
on_step_begin back to the previous step's end (batch fetch, the num_items_in_batch gather, logging), gradient
clipping, the optimizer step, and the log history.
"""
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PrefixTuningConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed  # noqa: E402

model_dir, dataset_file, s, out_dir = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
torch.set_num_threads(s["threads"])
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
rows = json.load(open(dataset_file))

args = TrainingArguments(
    output_dir=os.path.join(out_dir, "trainer"), per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
    max_steps=s["max_steps"], logging_steps=s["max_steps"], learning_rate=s["learning_rate"], optim="adamw_torch",
    save_strategy="no", report_to="none", disable_tqdm=True, seed=42, use_cpu=True, dataloader_num_workers=0,
    **({"ddp_backend": "gloo"} if s["world"] > 1 else {}),
)  # under torchrun this joins the Gloo process group (accelerate)
rank, world = args.process_index, args.world_size
assert world == s["world"], (world, s["world"])

model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
set_seed(42)
pm = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=s["num_virtual_tokens"],
                                              prefix_projection=s["prefix_projection"]))

now = time.perf_counter
marks = {"begin": 0.0, "step_begin": 0.0, "pre_opt": 0.0, "opt": 0.0, "last_end": 0.0}
spent = {"training_step": 0.0}
step_end, breakdown = [], []


class Timer(TrainerCallback):
    def on_train_begin(self, a, state, control, **kw):
        marks["begin"] = marks["last_end"] = now()

    def on_step_begin(self, a, state, control, **kw):
        marks["step_begin"] = now()
        spent["training_step"] = 0.0

    def on_pre_optimizer_step(self, a, state, control, **kw):
        marks["pre_opt"] = now()

    def on_optimizer_step(self, a, state, control, **kw):
        marks["opt"] = now()

    def on_step_end(self, a, state, control, **kw):
        t = now()
        step_end.append(t - marks["begin"])
        breakdown.append({
            "before_step": marks["step_begin"] - marks["last_end"],  # next batch, num_items gather, log/save checks
            "forward_backward": spent["training_step"],  # DDP: the gradient all-reduce runs inside backward
            "clip": marks["pre_opt"] - marks["step_begin"] - spent["training_step"],
            "optimizer": marks["opt"] - marks["pre_opt"],
            "after_step": t - marks["opt"],  # lr scheduler, zero_grad
        })
        marks["last_end"] = t


trainer = Trainer(model=pm, args=args, train_dataset=rows, callbacks=[Timer()])
training_step = trainer.training_step


def timed_training_step(*a, **k):
    t = now()
    try:
        return training_step(*a, **k)
    finally:
        spent["training_step"] += now() - t


trainer.training_step = timed_training_step
out = trainer.train()
with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
    json.dump({
        "side": "peft", "rank": rank, "world": world, "threads": torch.get_num_threads(), "step_end": step_end,
        "breakdown": breakdown, "log_history": trainer.state.log_history, "train_loss": out.training_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ddp": {"find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
                "wrapped": type(trainer.model_wrapped).__name__},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": __import__("peft").__version__, "accelerate": __import__("accelerate").__version__},
    }, f)
if world > 1:
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # With torch 2.13.0+cpu about 1 run in 6 of 2 ranks aborts in interpreter finalization, after everything above
    # ("terminate called without an active exception", SIGABRT, so torchrun fails): a C++ static with a live thread.
    # The results are written by then; leave without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
