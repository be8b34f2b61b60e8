#!/usr/bin/env python3
"""Golden data for data-parallel training: the REAL HF Trainer (transformers 5.17.0, accelerate 1.15.0, peft 0.21.0,
torch 2.13.0+cpu) under a REAL `torchrun --nproc-per-node 2` with the Gloo backend on CPU (accelerate DistributedType
MULTI_CPU, torch DistributedDataParallel), plus 1-process runs with the per-device batch doubled for comparison.

How to run (from anywhere; same environment as scripts/gen_fixtures_trainer.py):

    python scripts/gen_fixtures_ddp.py

The parent process launches, for every run below, either
    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port <free port> scripts/gen_fixtures_ddp.py \
        --fixture-worker --fixture-run <name> --fixture-tmp <dir>
or, for the single-process runs, a plain `python scripts/gen_fixtures_ddp.py --fixture-worker ...` (no torchrun environment),
collects what every rank dumped and rewrites test/fixtures/ddp/ (only that folder).

Inputs (committed): test/fixtures/tiny-bloom, test/fixtures/tokenizer, test/fixtures/trainer/dataset.json (24 rows,
already tokenized by the tutorial's process_func). Helpers (FakeClock, LoggedDataset, jsonable, ...) are imported from
scripts/gen_fixtures_trainer.py, so the conventions are the same: fp32 CPU, torch.set_num_threads(1),
torch.use_deterministic_algorithms(True), set_seed(42) right before get_peft_model, a fake clock (2.5 s per
time.time() call inside transformers.trainer / trainer_utils) so the timing metrics are reproducible.

Outputs: see README (written to test/fixtures/ddp/README.md).
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))

import torch  # noqa: E402
import gen_fixtures_trainer as T  # noqa: E402  (helpers only; importing it runs nothing)
from fixture_cpu import write_made_on  # noqa: E402

FIX = "test/fixtures"
OUT = os.path.join(FIX, "ddp")
DATASET = os.path.join(FIX, "trainer", "dataset.json")
TRAINER_NOPROJ = os.path.join(FIX, "trainer", "run_noproj.safetensors")  # cross-check of the init

COMMON = dict(report_to="none", use_cpu=True, dataloader_num_workers=0, save_strategy="no",
              disable_tqdm=False, optim="adamw_torch", learning_rate=5e-3, seed=42)
# ddp_backend="gloo" only for the torchrun runs: in a plain (non-torchrun) process accelerate 1.15's
# PartialState(cpu=True, backend="gloo") skips init_process_group but then calls dist.get_world_size() -> ValueError
DDP_ONLY = dict(ddp_backend="gloo")


def passed_args(spec):
    return {**COMMON, **(DDP_ONLY if spec["world"] > 1 else {}), **spec["args"]}

# world: 2 = torchrun with 2 processes, 1 = plain python (not distributed at all)
RUNS = [
    dict(name="ddp_noproj", world=2, proj=False, rows=24, snap_every=True, compare_with="single_noproj_bs4",
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=6, logging_steps=1)),
    dict(name="single_noproj_bs4", world=1, proj=False, rows=24, snap_every=True,
         args=dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=6, logging_steps=1)),
    dict(name="ddp_proj_ga2", world=2, proj=True, rows=24, snap_every=False, compare_with="single_proj_ga2_bs4",
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=4, logging_steps=1,
                   save_strategy="steps", save_steps=4)),
    dict(name="single_proj_ga2_bs4", world=1, proj=True, rows=24, snap_every=False,
         args=dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4, logging_steps=1,
                   save_strategy="steps", save_steps=4)),
    dict(name="ddp_uneven", world=2, proj=False, rows=22, snap_every=True, compare_with="single_uneven_bs8",
         args=dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, num_train_epochs=2,
                   logging_steps=1)),
    dict(name="single_uneven_bs8", world=1, proj=False, rows=22, snap_every=True,
         args=dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, num_train_epochs=2,
                   logging_steps=1)),
    # logging window that does not divide max_steps: the unlogged remainder of _tr_loss is NOT gathered
    dict(name="ddp_logrem", world=2, proj=False, rows=24, snap_every=False,
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=5, logging_steps=2)),
    # logging_nan_inf_filter: the value training_step RETURNS on rank 1 at update 4 is replaced by NaN (the backward
    # already ran with the real loss, so the parameters are untouched); shows the filter acts per rank, before gather
    dict(name="ddp_nanfilter", world=2, proj=False, rows=24, snap_every=False,
         nan_inject=dict(rank=1, update=4),
         args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=4, logging_steps=2)),
]
RUN_BY_NAME = {r["name"]: r for r in RUNS}


def log(*a):
    print(*a, flush=True)


# ======================================================================================================================
# Worker (one process = one rank; or the single process)
# ======================================================================================================================
def deterministic_rows(spec):
    """One thread, deterministic algorithms, quiet transformers; the run's dataset rows and the fixture tokenizer."""
    import transformers
    from transformers import AutoTokenizer
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    with open(DATASET, encoding="utf-8") as f:
        rows = json.load(f)[: spec["rows"]]
    return rows, AutoTokenizer.from_pretrained(T.TOK_DIR)


def worker(name, tmp):
    import transformers
    import accelerate
    import peft
    import peft.peft_model as peft_model_mod
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
    from transformers import set_seed
    from peft import PrefixTuningConfig, get_peft_model

    spec = RUN_BY_NAME[name]
    os.chdir(REPO_ROOT)
    rows, tok = deterministic_rows(spec)

    out_dir = os.path.join(tmp, name, "output")
    kwargs = {**passed_args(spec), "output_dir": out_dir}
    args = TrainingArguments(**kwargs)  # under torchrun this initialises the gloo process group (accelerate)
    rank, world = args.process_index, args.world_size
    assert world == spec["world"], (world, spec["world"])

    model = T.load_base()
    pcfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=spec["proj"])
    set_seed(42)
    pm = get_peft_model(model, pcfg)
    trainable = T.trainable_of(pm)
    names = [n for n, _ in trainable]
    init = {n: p.detach().clone() for n, p in trainable}

    ds = T.LoggedDataset(rows)
    collator = DataCollatorForSeq2Seq(tokenizer=tok, padding=True)
    rec = {"rank": rank, "world": world, "updates": [], "events": [], "writes": []}
    cur = {}
    tensors = {}  # name -> tensor (dumped to the tmp dir, the parent picks what goes into the fixtures)
    snaps = {}

    class Rec(TrainerCallback):
        def on_train_begin(self, args_, state, control, train_dataloader=None, **kw):
            dl = train_dataloader
            bsm = getattr(dl, "batch_sampler", None)
            inner = getattr(bsm, "batch_sampler", None)
            smp = getattr(inner, "sampler", None) if inner is not None else getattr(bsm, "sampler", None)
            rec["train_dataloader"] = {
                "type": type(dl).__name__, "len": len(dl),
                "batch_sampler": type(bsm).__name__,
                "batch_sampler_num_processes": getattr(bsm, "num_processes", None),
                "batch_sampler_process_index": getattr(bsm, "process_index", None),
                "batch_sampler_even_batches": getattr(bsm, "even_batches", None),
                "batch_sampler_split_batches": getattr(bsm, "split_batches", None),
                "batch_sampler_batch_size": getattr(bsm, "batch_size", None),
                "batch_sampler_drop_last": getattr(bsm, "drop_last", None),
                "inner_batch_sampler": type(inner).__name__ if inner is not None else None,
                "inner_batch_sampler_len": len(inner) if inner is not None else None,
                "sampler": type(smp).__name__, "sampler_initial_seed": getattr(smp, "initial_seed", None),
                "sampler_epoch_at_train_begin": getattr(smp, "epoch", None),
                "total_batch_size": getattr(dl, "total_batch_size", None),
                "total_dataset_length": getattr(dl, "total_dataset_length", None),
                "dataset_len": len(dl.dataset),
            }
            rec["events"].append(f"train_begin max_steps={state.max_steps} num_train_epochs={state.num_train_epochs}")

        def on_epoch_begin(self, args_, state, control, **kw):
            rec["events"].append(f"epoch_begin epoch={state.epoch}")

        def on_step_begin(self, args_, state, control, **kw):
            cur.clear()
            cur.update({"update": state.global_step + 1, "micro_batches": []})

        def on_pre_optimizer_step(self, args_, state, control, optimizer=None, **kw):
            cur["lr"] = optimizer.param_groups[0]["lr"]

        def on_step_end(self, args_, state, control, model=None, **kw):
            u = state.global_step
            cur["global_step"] = u
            cur["epoch"] = state.epoch
            rec["updates"].append(json.loads(json.dumps(T.jsonable(dict(cur)))))
            snaps[u] = {n: p.detach().clone() for n, p in trainable}
            rec["events"].append(f"step_end gs={u} should_log={control.should_log} should_save={control.should_save}"
                                 f" should_training_stop={control.should_training_stop}")

        def on_log(self, args_, state, control, logs=None, **kw):
            rec["events"].append(f"log gs={state.global_step} keys={list(logs)}")

        def on_epoch_end(self, args_, state, control, **kw):
            rec["events"].append(f"epoch_end epoch={state.epoch} gs={state.global_step}")

        def on_save(self, args_, state, control, **kw):
            d = os.path.join(args_.output_dir, f"checkpoint-{state.global_step}")
            if world > 1:
                torch.distributed.barrier()  # every rank has finished _save_checkpoint
            rec["events"].append(f"save gs={state.global_step}")
            if rank == 0:
                rec["checkpoint"] = {"folder": os.path.basename(d), "files": sorted(os.listdir(d)),
                                     "output_dir_listing": sorted(os.listdir(args_.output_dir))}
            if world > 1:
                torch.distributed.barrier()  # rank 0 listed before anybody goes on

    trainer = Trainer(model=pm, args=args, train_dataset=ds, data_collator=collator, callbacks=[Rec()])

    # ---- which files does this rank write? (python-level opens via an audit hook + PEFT's safetensors writer) ----
    def audit(event, a):
        if event == "open" and isinstance(a[0], str) and a[0].startswith(out_dir):
            mode = a[1] if isinstance(a[1], str) else ""
            if any(c in mode for c in "wax"):
                rec["writes"].append(os.path.relpath(a[0], out_dir))

    sys.addaudithook(audit)
    orig_safe_save = peft_model_mod.safe_save_file

    def safe_save(tensors_, filename, *a, **k):
        rec["writes"].append(os.path.relpath(str(filename), out_dir) + " (safetensors)")
        return orig_safe_save(tensors_, filename, *a, **k)

    peft_model_mod.safe_save_file = safe_save
    orig_torch_save = torch.save

    def torch_save(obj, f, *a, **k):  # optimizer.pt, scheduler.pt, rng_state*.pth, training_args.bin (C++ writer)
        if isinstance(f, (str, os.PathLike)) and str(f).startswith(out_dir):
            rec["writes"].append(os.path.relpath(str(f), out_dir) + " (torch.save)")
        return orig_torch_save(obj, f, *a, **k)

    torch.save = torch_save
    orig_tok_save = tok.save_pretrained  # Trainer._save saves data_collator.tokenizer (processing_class is None)

    def tok_save_pretrained(save_directory, *a, **k):
        rec["writes"].append(os.path.relpath(str(save_directory), out_dir) + "/<tokenizer files> (tokenizer.save_pretrained)")
        return orig_tok_save(save_directory, *a, **k)

    tok.save_pretrained = tok_save_pretrained

    # ---- instrumentation of this Trainer instance -------------------------------------------------------------------
    access_pos = [0]
    orig_siv = trainer.set_initial_training_values

    def set_initial_training_values(args_, dataloader):
        r = orig_siv(args_, dataloader)
        keys = ["num_train_epochs", "num_update_steps_per_epoch", "num_examples", "num_train_samples",
                "total_train_batch_size", "steps_in_epoch", "max_steps"]
        rec["set_initial_training_values"] = dict(zip(keys, r))
        return r

    trainer.set_initial_training_values = set_initial_training_values

    orig_compute_loss = trainer.compute_loss
    last_cl = {}

    def compute_loss(model_, inputs, return_outputs=False, num_items_in_batch=None):
        r = orig_compute_loss(model_, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = r[0] if return_outputs else r
        last_cl["loss"] = loss.item()
        return r

    trainer.compute_loss = compute_loss

    orig_training_step = trainer.training_step

    def training_step(model_, inputs, num_items_in_batch=None):
        B = int(inputs["input_ids"].shape[0])
        idx = ds.access[access_pos[0]:access_pos[0] + B]
        access_pos[0] += B
        lab = inputs["labels"]
        sync = bool(getattr(model_, "require_backward_grad_sync", True))
        loss = orig_training_step(model_, inputs, num_items_in_batch)
        mb = {
            "indices": idx,
            "shape": list(inputs["input_ids"].shape),
            "local_labels_shifted": int((lab[..., 1:] != -100).sum()),
            "num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
            "compute_loss_value": last_cl["loss"],
            "training_step_value": loss.item(),
            "ddp_require_backward_grad_sync": sync,
            "grad_norm_after_backward": torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for _, p in trainable if p.grad is not None])).item(),
        }
        k = len(cur["micro_batches"])
        for n, p in trainable:
            tensors[f"grad_after_micro_{cur['update']}_{k}.{n}"] = p.grad.detach().clone()
        cur["micro_batches"].append(mb)
        ni = spec.get("nan_inject")
        if ni and ni["rank"] == rank and ni["update"] == cur["update"]:
            mb["returned_nan_instead"] = True
            return torch.full_like(loss, float("nan"))
        return loss

    trainer.training_step = training_step

    orig_clip = trainer._clip_grad_norm

    def clip(model_):
        u = cur["update"]
        for n, p in trainable:
            tensors[f"grad_preclip_update_{u}.{n}"] = p.grad.detach().clone()
        norm = orig_clip(model_)
        cur["grad_norm_preclip"] = norm.item()
        return norm

    trainer._clip_grad_norm = clip

    with T.fake_hf_clock() as clock:
        with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()):
            out = trainer.train()
    peft_model_mod.safe_save_file = orig_safe_save
    torch.save = orig_torch_save

    final = {n: p.detach().clone() for n, p in trainable}
    acc = trainer.accelerator
    mw = trainer.model_wrapped
    rec.update({
        "name": name,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__},
        "training_args_passed": passed_args(spec),
        "trainable_param_names": names,
        "trainable_param_shapes": {n: list(p.shape) for n, p in trainable},
        "args": {
            "world_size": args.world_size, "process_index": args.process_index,
            "local_process_index": args.local_process_index, "n_gpu": args.n_gpu,
            "parallel_mode": str(args.parallel_mode), "train_batch_size": args.train_batch_size,
            "should_save": args.should_save, "should_log": args.should_log, "device": str(args.device),
            "ddp_backend": args.ddp_backend, "average_tokens_across_devices": args.average_tokens_across_devices,
            "logging_nan_inf_filter": args.logging_nan_inf_filter,
        },
        "accelerator": {
            "distributed_type": str(acc.distributed_type), "num_processes": acc.num_processes,
            "process_index": acc.process_index, "is_main_process": acc.is_main_process,
            "split_batches": acc.split_batches, "even_batches": acc.even_batches,
            "use_seedable_sampler": acc.use_seedable_sampler, "dispatch_batches": acc.dispatch_batches,
            "gradient_accumulation_steps": acc.gradient_accumulation_steps,
            "backend": str(torch.distributed.get_backend()) if torch.distributed.is_initialized() else None,
            "ddp_kwargs": T.jsonable(acc.ddp_handler.to_kwargs()) if acc.ddp_handler is not None else None,
        },
        "model_wrapped_type": type(mw).__name__,
        "ddp_find_unused_parameters": getattr(mw, "find_unused_parameters", None),
        "ddp_gradient_as_bucket_view": getattr(mw, "gradient_as_bucket_view", None),
        "model_accepts_loss_kwargs": bool(trainer.model_accepts_loss_kwargs),
        "state": {"global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps,
                  "num_train_epochs": trainer.state.num_train_epochs, "epoch": trainer.state.epoch,
                  "logging_steps": trainer.state.logging_steps, "save_steps": trainer.state.save_steps,
                  "total_flos": trainer.state.total_flos, "train_batch_size": trainer.state.train_batch_size,
                  "is_world_process_zero": trainer.state.is_world_process_zero,
                  "is_local_process_zero": trainer.state.is_local_process_zero},
        "is_world_process_zero": trainer.is_world_process_zero(),
        "sample_access_order": list(ds.access),
        "log_history": trainer.state.log_history,
        "train_output": {"global_step": out.global_step, "training_loss": out.training_loss,
                         "metrics": dict(out.metrics)},
        "final_total_loss_scalar": trainer._total_loss_scalar,
        "fake_clock_calls": clock.calls,
        "progress_stdout_lines": len(printed.getvalue().splitlines()),
    })
    ck = rec.get("checkpoint")
    if rank == 0 and ck:
        d = os.path.join(out_dir, ck["folder"])
        with open(os.path.join(d, "trainer_state.json"), encoding="utf-8") as f:
            ck["trainer_state"] = json.load(f)
        ck["contents"] = {}
        for fn in sorted(os.listdir(d)):
            if fn.endswith((".pt", ".pth")):
                ck["contents"][fn] = T.describe_pt(torch.load(os.path.join(d, fn), weights_only=False))
        rngs = [fn for fn in sorted(os.listdir(d)) if fn.startswith("rng_state")]
        if len(rngs) > 1:
            a = torch.load(os.path.join(d, rngs[0]), weights_only=False)
            ck["rng_state_files_cpu_state_equal"] = all(
                torch.equal(a["cpu"], torch.load(os.path.join(d, x), weights_only=False)["cpu"]) for x in rngs[1:])
        shutil.copytree(d, os.path.join(tmp, name, "checkpoint_copy"))
    if world > 1:
        torch.distributed.barrier()

    for n in names:
        tensors[f"param_init.{n}"] = init[n]
        tensors[f"param_final.{n}"] = final[n]
        for u, s in snaps.items():
            tensors[f"param_after_update_{u}.{n}"] = s[n]
    torch.save(tensors, os.path.join(tmp, name, f"rank{rank}.pt"))
    with open(os.path.join(tmp, name, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(T.jsonable(rec), f, indent=1, ensure_ascii=False)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


# ======================================================================================================================
# Parent
# ======================================================================================================================
def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec, tmp):
    os.makedirs(os.path.join(tmp, spec["name"]), exist_ok=True)
    me = os.path.abspath(__file__)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")}
    env["OMP_NUM_THREADS"] = "1"
    if spec["world"] > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(spec["world"]),
               "--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               me, "--fixture-worker", "--fixture-run", spec["name"], "--fixture-tmp", tmp]
    else:
        cmd = [sys.executable, me, "--fixture-worker", "--fixture-run", spec["name"], "--fixture-tmp", tmp]
    log(f"[{spec['name']}] {' '.join(cmd[1:4]) if spec['world'] > 1 else 'python'} ... (world {spec['world']})")
    p = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-6000:] + "\n" + p.stderr[-12000:])
        raise SystemExit(f"run {spec['name']} failed with rc {p.returncode}")


def load_rank(tmp, name, r):
    with open(os.path.join(tmp, name, f"rank{r}.json"), encoding="utf-8") as f:
        j = json.load(f)
    t = torch.load(os.path.join(tmp, name, f"rank{r}.pt"), weights_only=True)
    return j, t


def diffs(a, b):
    """max abs / max elementwise rel / norm-rel difference of two same-shape tensors (float64)."""
    a, b = a.double(), b.double()
    d = (a - b).abs()
    return {"max_abs": d.max().item(),
            "max_rel": (d / b.abs().clamp_min(1e-30)).max().item(),
            "norm_rel": (d.norm() / b.norm().clamp_min(1e-30)).item(),
            "bitexact": bool(torch.equal(a, b))}


def diffs_params(ta, tb, prefix, names):
    per = {n: diffs(ta[f"{prefix}.{n}"], tb[f"{prefix}.{n}"]) for n in names}
    return {"max_abs": max(x["max_abs"] for x in per.values()), "max_rel": max(x["max_rel"] for x in per.values()),
            "norm_rel_max": max(x["norm_rel"] for x in per.values()),
            "bitexact": all(x["bitexact"] for x in per.values()), "per_param": per}


def scalar_diffs(xs, ys):
    ad = [abs(x - y) for x, y in zip(xs, ys)]
    rd = [abs(x - y) / abs(y) if y else (0.0 if x == y else float("inf")) for x, y in zip(xs, ys)]
    return {"values_a": xs, "values_b": ys, "abs_diff": ad, "max_abs": max(ad), "max_rel": max(rd),
            "bitexact": xs == ys}


def summarize_ranks(name, ranks):
    """Everything that must be identical across ranks, checked; per-rank things kept per rank."""
    js = [j for j, _ in ranks]
    ts = [t for _, t in ranks]
    names = js[0]["trainable_param_names"]
    chk = {}
    chk["log_history_identical_across_ranks"] = all(j["log_history"] == js[0]["log_history"] for j in js)
    chk["final_params_bitexact_across_ranks"] = all(
        torch.equal(t[f"param_final.{n}"], ts[0][f"param_final.{n}"]) for t in ts for n in names)
    chk["init_params_bitexact_across_ranks"] = all(
        torch.equal(t[f"param_init.{n}"], ts[0][f"param_init.{n}"]) for t in ts for n in names)
    # gradients: after every micro-batch, equal across ranks only if DDP synced (all-reduced) on that backward
    per_micro = []
    for ui, upd in enumerate(js[0]["updates"]):
        for k, mb in enumerate(upd["micro_batches"]):
            key = f"grad_after_micro_{upd['update']}_{k}"
            eq = all(torch.equal(t[f"{key}.{n}"], ts[0][f"{key}.{n}"]) for t in ts for n in names)
            per_micro.append({"update": upd["update"], "micro": k,
                              "ddp_require_backward_grad_sync": [j["updates"][ui]["micro_batches"][k][
                                  "ddp_require_backward_grad_sync"] for j in js],
                              "grads_bitexact_across_ranks": eq})
    chk["grads_after_each_micro_batch"] = per_micro
    chk["preclip_grads_bitexact_across_ranks"] = all(
        torch.equal(t[k], ts[0][k]) for t in ts for k in ts[0] if k.startswith("grad_preclip_update_"))
    chk["grad_norm_identical_across_ranks"] = all(
        [u["grad_norm_preclip"] for u in j["updates"]] == [u["grad_norm_preclip"] for u in js[0]["updates"]]
        for j in js)
    chk["training_loss_per_rank"] = [j["train_output"]["training_loss"] for j in js]
    chk["train_output_identical_across_ranks"] = all(j["train_output"] == js[0]["train_output"] for j in js)
    return chk


def sum_of_grad_check(ranks, single):
    """DDP grad of update 1 == (g_rank0_local + g_rank1_local)/2 ? (only meaningful with GA where the first
    micro-batch is local); here: the synced grad vs the single-process grad of the same samples."""
    js, ts = zip(*ranks)
    names = js[0]["trainable_param_names"]
    out = {}
    if single is not None:
        sj, st = single
        out["update1_preclip_grad_vs_single"] = diffs_params(ts[0], st, "grad_preclip_update_1", names)
    return out


def build_run_fixture(spec, tmp, results):
    name = spec["name"]
    ranks = [load_rank(tmp, name, r) for r in range(spec["world"])]
    j0, t0 = ranks[0]
    names = j0["trainable_param_names"]
    run = {
        "name": name,
        "world_size": spec["world"],
        "settings": {"prefix_projection": spec["proj"], "num_virtual_tokens": 4, "init": "set_seed(42) before "
                     "get_peft_model", "dataset": "test/fixtures/trainer/dataset.json",
                     "rows_used": spec["rows"], "training_args_passed": j0["training_args_passed"],
                     "launcher": ("torchrun --nproc-per-node 2 --master-addr 127.0.0.1 (gloo, CPU)"
                                  if spec["world"] > 1 else "plain python, 1 process, not distributed"),
                     "nan_inject": spec.get("nan_inject")},
        "versions": j0["versions"],
        "trainable_param_names": names,
        "trainable_param_shapes": j0["trainable_param_shapes"],
        "args": j0["args"],
        "accelerator": j0["accelerator"],
        "model_wrapped_type": j0["model_wrapped_type"],
        "ddp_find_unused_parameters": j0["ddp_find_unused_parameters"],
        "model_accepts_loss_kwargs": j0["model_accepts_loss_kwargs"],
        "set_initial_training_values": j0["set_initial_training_values"],
        "train_dataloader_per_rank": [j["train_dataloader"] for j, _ in ranks],
        "state": j0["state"],
        "state_is_world_process_zero_per_rank": [j["state"]["is_world_process_zero"] for j, _ in ranks],
        "sample_access_order_per_rank": [j["sample_access_order"] for j, _ in ranks],
        "updates_per_rank": [j["updates"] for j, _ in ranks],
        "log_history": j0["log_history"],
        "train_output": j0["train_output"],
        "train_output_per_rank": [j["train_output"] for j, _ in ranks],
        "final_total_loss_scalar_per_rank": [j["final_total_loss_scalar"] for j, _ in ranks],
        "callback_events_rank0": j0["events"],
        "files_written_per_rank": [sorted(set(j["writes"])) for j, _ in ranks],
        "fake_clock_calls_per_rank": [j["fake_clock_calls"] for j, _ in ranks],
    }
    # global view of each update: the union of the ranks' micro-batch k = the single run's micro-batch k
    glob = []
    for ui in range(len(j0["updates"])):
        g = {"update": j0["updates"][ui]["update"], "micro_batches": []}
        for k in range(len(j0["updates"][ui]["micro_batches"])):
            mbs = [j["updates"][ui]["micro_batches"][k] for j, _ in ranks]
            g["micro_batches"].append({
                "indices_all_ranks": [i for mb in mbs for i in mb["indices"]],
                "sum_local_labels_shifted": sum(mb["local_labels_shifted"] for mb in mbs),
                "num_items_in_batch": mbs[0]["num_items_in_batch"],
                "sum_training_step_values": sum(mb["training_step_value"] for mb in mbs),
                "mean_training_step_values": sum(mb["training_step_value"] for mb in mbs) / len(mbs),
            })
        glob.append(g)
    if spec["world"] > 1:
        run["updates_global_view"] = glob
    if spec["world"] > 1:
        run["cross_rank_checks"] = summarize_ranks(name, ranks)
    if "checkpoint" in j0:
        ck = dict(j0["checkpoint"])
        run["checkpoint"] = {k: v for k, v in ck.items() if k != "trainer_state"}
        run["checkpoint_trainer_state"] = ck["trainer_state"]
    # tensors for the fixture
    tens = {}
    for n in names:
        if not (spec["world"] == 1 and spec["proj"]):  # same init as the DDP run (checked in compare.json)
            tens[f"param_init.{n}"] = t0[f"param_init.{n}"]
        tens[f"param_final.{n}"] = t0[f"param_final.{n}"]
        if spec["snap_every"] and spec["world"] > 1:  # single runs: snapshots only in compare.json's diffs
            for u in range(1, j0["state"]["global_step"] + 1):
                tens[f"param_after_update_{u}.{n}"] = t0[f"param_after_update_{u}.{n}"]
        if spec["snap_every"] or spec["world"] == 1 and not spec["proj"]:
            tens[f"grad_preclip_update_1.{n}"] = t0[f"grad_preclip_update_1.{n}"]
    if spec["world"] > 1 and spec["args"].get("gradient_accumulation_steps", 1) > 1 and not spec["proj"]:
        for r, (_, t) in enumerate(ranks):
            for n in names:
                tens[f"rank{r}_grad_after_micro_1_0.{n}"] = t[f"grad_after_micro_1_0.{n}"]
    results[name] = {"run": run, "ranks": ranks, "tensors": tens}
    return run, tens


def replay_update1(spec, ranks):
    """Replays update 1 of a DDP run in THIS (non-distributed) process, rank by rank, on the same model/init: each
    rank's micro-batches through PeftModel.forward(num_items_in_batch=<global count>), loss * world, backward
    (accumulating locally), then averages the ranks' local grads: (g_0 + g_1) / world. Checks that this is bit-exact
    to DDP's pre-clip grad of update 1, and that every micro-batch loss equals the recorded compute_loss value."""
    from transformers import DataCollatorForSeq2Seq, set_seed
    from peft import PrefixTuningConfig, get_peft_model
    rows, tok = deterministic_rows(spec)
    collator = DataCollatorForSeq2Seq(tokenizer=tok, padding=True)
    model = T.load_base()
    set_seed(42)
    pm = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                  prefix_projection=spec["proj"]))
    pm.train()
    trainable = T.trainable_of(pm)
    world = spec["world"]
    local, losses_ok, micro0_ok = [], True, True
    for r, (j, t) in enumerate(ranks):
        for _, p in trainable:
            p.grad = None
        for k, mb in enumerate(j["updates"][0]["micro_batches"]):
            batch = collator([dict(rows[i]) for i in mb["indices"]])
            out = pm(**batch, num_items_in_batch=torch.tensor(mb["num_items_in_batch"]))
            loss = out.loss * world
            losses_ok &= loss.item() == mb["compute_loss_value"]
            loss.backward()
            if k == 0 and len(j["updates"][0]["micro_batches"]) > 1:  # under no_sync: the rank-local grad
                micro0_ok &= all(torch.equal(p.grad, t[f"grad_after_micro_1_0.{n}"]) for n, p in trainable)
        local.append({n: p.grad.detach().clone() for n, p in trainable})
    avg = {}
    for n, _ in trainable:
        acc = local[0][n].clone()
        for g in local[1:]:
            acc = acc + g[n]
        avg[n] = acc / world
    t0 = ranks[0][1]
    res = {
        "micro_batch_losses_bitexact": bool(losses_ok),
        "grad_preclip_update_1_equals_mean_of_local_grads_bitexact": all(
            torch.equal(avg[n], t0[f"grad_preclip_update_1.{n}"]) for n, _ in trainable),
        "max_abs_diff": max((avg[n].double() - t0[f"grad_preclip_update_1.{n}"].double()).abs().max().item()
                            for n, _ in trainable),
    }
    if spec["args"].get("gradient_accumulation_steps", 1) > 1:
        res["no_sync_micro_batch_0_grad_is_rank_local_bitexact"] = bool(micro0_ok)
    return res


def compare_ddp_single(ddp, single):
    dr, sr = ddp["run"], single["run"]
    names = dr["trainable_param_names"]
    d0, s0 = ddp["ranks"][0][1], single["ranks"][0][1]
    c = {"ddp": dr["name"], "single": sr["name"]}
    c["init_bitexact"] = diffs_params(d0, s0, "param_init", names)["bitexact"]
    c["final_params"] = diffs_params(d0, s0, "param_final", names)
    gs = min(dr["state"]["global_step"], sr["state"]["global_step"])
    c["params_after_each_update"] = [
        {k: v for k, v in diffs_params(d0, s0, f"param_after_update_{u}", names).items() if k != "per_param"}
        for u in range(1, gs + 1)]
    c["update1_preclip_grad"] = {k: v for k, v in diffs_params(d0, s0, "grad_preclip_update_1", names).items()
                                 if k != "per_param"}
    dl = [e for e in dr["log_history"] if "loss" in e]
    sl = [e for e in sr["log_history"] if "loss" in e]
    c["log_loss"] = scalar_diffs([e["loss"] for e in dl], [e["loss"] for e in sl])
    c["log_grad_norm"] = scalar_diffs([e["grad_norm"] for e in dl], [e["grad_norm"] for e in sl])
    c["log_learning_rate_equal"] = [e["learning_rate"] for e in dl] == [e["learning_rate"] for e in sl]
    c["log_epoch_equal"] = [e["epoch"] for e in dl] == [e["epoch"] for e in sl]
    c["log_steps_equal"] = [e["step"] for e in dl] == [e["step"] for e in sl]
    c["training_loss"] = scalar_diffs([dr["train_output"]["training_loss"]], [sr["train_output"]["training_loss"]])
    dm, sm = dr["train_output"]["metrics"], sr["train_output"]["metrics"]
    c["metrics_ddp"], c["metrics_single"] = dm, sm
    c["num_items_in_batch_equal"] = [mb["num_items_in_batch"] for u in dr["updates_global_view"]
                                     for mb in u["micro_batches"]] == [
        mb["num_items_in_batch"] for u in sr["updates_per_rank"][0] for mb in u["micro_batches"]]
    c["samples_per_update_equal_as_multisets"] = [
        sorted(i for mb in u["micro_batches"] for i in mb["indices_all_ranks"]) for u in dr["updates_global_view"]
    ] == [sorted(i for mb in u["micro_batches"] for i in mb["indices"]) for u in sr["updates_per_rank"][0]]
    c["samples_per_update_ddp"] = [sorted(i for mb in u["micro_batches"] for i in mb["indices_all_ranks"])
                                   for u in dr["updates_global_view"]]
    c["samples_per_update_single"] = [sorted(i for mb in u["micro_batches"] for i in mb["indices"])
                                      for u in sr["updates_per_rank"][0]]
    return c


def shard_table():
    """accelerate's BatchSamplerShard on BatchSampler(range(N)) -- the pure index structure, no training."""
    from torch.utils.data import BatchSampler, SequentialSampler
    from accelerate.data_loader import BatchSamplerShard
    cases = [(24, 2, 2, True), (24, 4, 2, True), (22, 4, 2, True), (22, 4, 2, False), (18, 4, 2, True),
             (20, 4, 2, True), (5, 4, 2, True), (3, 4, 2, True), (10, 3, 3, True), (7, 2, 4, True)]
    out = []
    for n, bs, world, even in cases:
        inner = BatchSampler(SequentialSampler(range(n)), batch_size=bs, drop_last=False)
        per = []
        for r in range(world):
            s = BatchSamplerShard(inner, num_processes=world, process_index=r, split_batches=False,
                                  even_batches=even)
            per.append({"len": len(s), "batches": [list(b) for b in s]})
        # closed form (even_batches=True): extend the epoch order to L = ceil(N/(bs*world))*bs*world entries with
        # ext[i] = order[(i-N) % min(N, bs*world)] for i >= N; rank r gets batches r, r+world, ... of ext
        formula_ok = None
        if even:
            L = -(-n // (bs * world)) * bs * world
            ext = list(range(n)) + [(i - n) % min(n, bs * world) for i in range(n, L)]
            bats = [ext[i:i + bs] for i in range(0, L, bs)]
            formula_ok = all(per[r]["batches"] == bats[r::world] for r in range(world))
        out.append({"n": n, "batch_size": bs, "world": world, "even_batches": even, "drop_last": False,
                    "inner_batches": [list(b) for b in inner], "per_rank": per, "closed_form_ok": formula_ok})
    return out


def logged_loss_formula(run):
    """Recomputes log_history losses and each rank's training_loss from the recorded training_step values:
    _tr_loss_r = float32 running sum on rank r (NaN/Inf -> += _tr_loss_r / (1 + gs - last_logged)); at a log step
    loss = float32 mean over ranks of _tr_loss_r (all_gather + mean) / (gs - last_logged); training_loss_r =
    (sum of the gathered means at log steps + rank r's own unlogged remainder) / global_step."""
    ups = run["updates_per_rank"]
    W = len(ups)
    hist = {e["step"]: e for e in run["log_history"] if "loss" in e}
    tr = [torch.tensor(0.0) for _ in range(W)]
    total, last, ok = 0.0, 0, []
    for ui in range(len(ups[0])):
        gs = ups[0][ui]["global_step"]
        for r in range(W):
            for mb in ups[r][ui]["micro_batches"]:
                if mb.get("returned_nan_instead"):
                    tr[r] += tr[r] / (1 + (gs - 1) - last)
                else:
                    tr[r] += torch.tensor(mb["training_step_value"])
        if gs in hist:
            m = torch.stack(tr).mean().item()
            ok.append(hist[gs]["loss"] == m / (gs - last))
            total += m
            last = gs
            tr = [t - t for t in tr]
    per_rank = [(total + tr[r].item()) / ups[0][-1]["global_step"] for r in range(W)]
    return {"log_losses_bitexact": all(ok), "n_logs": len(ok),
            "training_loss_per_rank_bitexact": per_rank == [t["training_loss"] for t in run["train_output_per_rank"]]}


README = """# test/fixtures/ddp

Generated by `scripts/gen_fixtures_ddp.py` with the REAL `transformers.Trainer` (5.17.0) + accelerate 1.15.0 +
peft 0.21.0 + torch 2.13.0+cpu under a real `torchrun --nproc-per-node 2 --master-addr 127.0.0.1` (Gloo, CPU,
accelerate `MULTI_CPU`, `DistributedDataParallel`), and 1-process runs (plain python, not distributed) with the
per-device batch doubled. Do not edit by hand; re-run the script. Model `tiny-bloom`, tokenizer `tokenizer`, rows
from `test/fixtures/trainer/dataset.json` (the first `rows_used`), fp32, 1 thread per rank, prefix tuning with 4
virtual tokens, `set_seed(42)` right before `get_peft_model` (same init as `trainer/run_noproj`), adamw_torch,
lr 5e-3 linear, fake clock (2.5 s per `time.time()` call, per process).

Runs (`<run>.json` + `<run>.safetensors`):
- `ddp_noproj` (world 2, bs 2/rank, GA 1, max_steps 6, logging 1) vs `single_noproj_bs4` (1 process, bs 4).
- `ddp_proj_ga2` (world 2, projection, bs 2/rank, GA 2, max_steps 4, logging 1, saves checkpoint-4) vs
  `single_proj_ga2_bs4` (1 process, bs 4, GA 2, saves checkpoint-4).
- `ddp_uneven` (world 2, rows 0..21, bs 4/rank, 2 epochs: accelerate even_batches wraps around in the last round of
  each epoch) vs `single_uneven_bs8` (1 process, bs 8; NOT equivalent in the last update of each epoch).
- `ddp_logrem` (world 2, max_steps 5, logging 2: the unlogged remainder of step 5 is per-rank -> training_loss differs
  per rank).
- `ddp_nanfilter` (world 2, max_steps 4, logging 2; the value `training_step` returns on rank 1 at update 4 is
  replaced by NaN after the real backward: logging_nan_inf_filter acts per rank before the gather).

`<run>.json` keys:
- `settings`, `versions`, `args` (TrainingArguments as seen by rank 0: world_size, process_index, n_gpu,
  parallel_mode, train_batch_size, should_save ...), `accelerator` (distributed_type, num_processes, even_batches,
  use_seedable_sampler, ddp_kwargs ...), `model_wrapped_type`, `set_initial_training_values` (the 7 values the
  Trainer computes: num_train_epochs, num_update_steps_per_epoch, num_examples, num_train_samples,
  total_train_batch_size, steps_in_epoch, max_steps), `train_dataloader_per_rank` (DataLoaderShard /
  BatchSamplerShard / SeedableRandomSampler facts, per-rank `len`).
- `sample_access_order_per_rank[r]`: dataset indices in the order rank r fetched them.
- `updates_per_rank[r][u]`: per optimizer update on rank r: `micro_batches[]` with `indices` (dataset rows of that
  rank's micro-batch), `shape`, `local_labels_shifted` (this micro-batch's `(labels[...,1:] != -100).sum()`),
  `num_items_in_batch` (as passed to compute_loss: the all-rank, all-micro-batch sum), `compute_loss_value` (the
  value compute_loss returned, i.e. local CE sum / num_items_in_batch * world_size), `training_step_value`
  (returned by training_step, what is added to `_tr_loss`), `ddp_require_backward_grad_sync` (False = inside
  `no_sync`), `grad_norm_after_backward` (local .grad norm after this backward); `grad_norm_preclip`, `lr`,
  `global_step`, `epoch`.
- `updates_global_view[u].micro_batches[k]`: union over ranks (`indices_all_ranks` = rank 0's then rank 1's),
  `sum_training_step_values`, `mean_training_step_values`.
- `log_history` (rank 0's `trainer.state.log_history`; identical on every rank, see `cross_rank_checks`),
  `train_output` (rank 0's TrainOutput), `train_output_per_rank`, `final_total_loss_scalar_per_rank`, `state`
  (rank 0's TrainerState fields), `callback_events_rank0`, `files_written_per_rank` (files under output_dir opened
  for writing by each rank; "(safetensors)" = written by PEFT's safetensors save_file), `checkpoint` (rank 0's
  listing of the checkpoint folder and of output_dir, torch.load()ed .pt/.pth structure, rng_state cpu equality),
  `checkpoint_trainer_state` (the saved trainer_state.json).
- `cross_rank_checks` (DDP runs): log_history / init / final params / pre-clip grads bit-exact across ranks; per
  micro-batch whether the local grads were bit-identical across ranks (only after a synced backward).

`<run>.safetensors` (F32, from rank 0): `param_init.<name>` (not in `single_proj_ga2_bs4`: same init as
`ddp_proj_ga2`), `param_final.<name>`, `param_after_update_<u>.<name>` (u = 1-based global step; `ddp_noproj`,
`ddp_uneven`), `grad_preclip_update_1.<name>` (noproj runs; for DDP runs: after DDP's all-reduce, identical on
every rank).

`compare.json`: each DDP run vs its 1-process doubled-batch run: final params / params after every update / update-1
grads (max_abs, max_rel elementwise, norm_rel, bitexact), logged loss / grad_norm diffs, lr / epoch / step equality,
training_loss, metrics of both, per-update sample multisets.

`shard_table.json`: accelerate `BatchSamplerShard(BatchSampler(range(N), bs, drop_last=False), world, rank,
split_batches=False, even_batches)` batches per rank for a few (N, bs, world) -- the pure index layout (replace
index i by `order[i]` for a shuffled epoch); `closed_form_ok`: the closed form in the script (extend the order to
`L = ceil(N/(bs*world))*bs*world` with `ext[i] = order[(i-N) % min(N, bs*world)]`, rank r takes batches r, r+world,
...) reproduces it.

`compare.json` also holds `init_equals_trainer_run_noproj_init`, `<ddp run>_replay_update1` (update 1 replayed in
one process rank by rank: DDP's pre-clip grad == (g_rank0 + g_rank1)/2 bit-exactly, where g_r is the rank-local
grad of `CE_sum_r / num_items_global * world`) and `logged_loss_formula` (log_history losses and each rank's
training_loss recomputed bit-exactly from the recorded per-rank `training_step_value`s).

`ddp_checkpoint_trainer_state.json`: `checkpoint-4/trainer_state.json` of `ddp_proj_ga2` (written by rank 0 only).
"""


def parent():
    os.chdir(REPO_ROOT)
    import transformers
    import accelerate
    import peft
    from safetensors.torch import save_file, load_file
    log(f"versions: torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} "
        f"accelerate {accelerate.__version__}")
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    results = {}
    compare = {}
    with tempfile.TemporaryDirectory(prefix="peft-node-ddp-") as tmp:
        for spec in RUNS:
            launch(spec, tmp)
        for spec in RUNS:
            run, tens = build_run_fixture(spec, tmp, results)
            tens = {k: v.to(torch.float32).contiguous() for k, v in tens.items()}
            save_file(tens, os.path.join(OUT, f"{spec['name']}.safetensors"), metadata={"format": "pt"})
            run["tensors"] = {k: list(v.shape) for k, v in tens.items()}
            T.write_json(os.path.join(OUT, f"{spec['name']}.json"), T.jsonable(run))
            if "checkpoint_trainer_state" in run and spec["world"] > 1:
                T.write_json(os.path.join(OUT, "ddp_checkpoint_trainer_state.json"), run["checkpoint_trainer_state"])
            log(f"[{spec['name']}] global_step={run['state']['global_step']} "
                f"training_loss(rank0)={run['train_output']['training_loss']!r} "
                f"losses={[e.get('loss') for e in run['log_history'] if 'loss' in e]}")
    # init == the single-process trainer fixture's init (same seed convention)
    ref = load_file(TRAINER_NOPROJ)
    k = "param_init.prompt_encoder.default.embedding.weight"
    compare["init_equals_trainer_run_noproj_init"] = bool(torch.equal(results["ddp_noproj"]["tensors"][k], ref[k]))
    for name in ("ddp_noproj", "ddp_proj_ga2", "ddp_uneven"):
        compare[f"{name}_replay_update1"] = rp = replay_update1(RUN_BY_NAME[name], results[name]["ranks"])
        log(f"[replay {name} update 1] {rp}")
    compare["logged_loss_formula"] = {spec["name"]: logged_loss_formula(results[spec["name"]]["run"]) for spec in RUNS}
    log(f"[logged loss formula] {compare['logged_loss_formula']}")
    for spec in RUNS:
        if spec.get("compare_with"):
            c = compare_ddp_single(results[spec["name"]], results[spec["compare_with"]])
            compare[f"{spec['name']}_vs_{spec['compare_with']}"] = c
            log(f"[compare {spec['name']} vs {spec['compare_with']}] final max_abs={c['final_params']['max_abs']:.3g}"
                f" max_rel={c['final_params']['max_rel']:.3g} log_loss max_abs={c['log_loss']['max_abs']:.3g} "
                f"max_rel={c['log_loss']['max_rel']:.3g} training_loss diff={c['training_loss']['max_abs']:.3g}")
    T.write_json(os.path.join(OUT, "compare.json"), T.jsonable(compare))
    T.write_json(os.path.join(OUT, "shard_table.json"), shard_table())
    write_made_on(OUT, threads=1)  # per rank (OMP_NUM_THREADS=1 and torch.set_num_threads(1) in every worker)
    with open(os.path.join(OUT, "README.md"), "w", encoding="utf-8") as f:
        f.write(README)
    total = sum(os.path.getsize(os.path.join(OUT, x)) for x in os.listdir(OUT))
    log(f"total size of {OUT}: {total} bytes")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture-worker", action="store_true")
    ap.add_argument("--fixture-run")
    ap.add_argument("--fixture-tmp")
    a = ap.parse_args()
    sys.exit(worker(a.fixture_run, a.fixture_tmp) if a.fixture_worker else parent())
