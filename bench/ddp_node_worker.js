// The Node side of `npm run bench:ddp`: one full peft-node Trainer run (prefix tuning, adamw_torch, save_strategy
// 'no'), one process per rank. Started by bench/ddp.js either through launch() (RANK / WORLD_SIZE / MASTER_* set: the
// Trainer joins the Gloo group by itself) or as a plain single process. Mirrors bench/ddp_peft_worker.py.
//   node bench/ddp_node_worker.js MODEL_DIR DATASET_JSON SETTINGS_JSON OUT_DIR
// Each rank writes OUT_DIR/rank-<RANK>.json: on_step_end timestamps (seconds since on_train_begin), the time per step
// spent in forward+backward, the gradient all-reduce, the other collectives (all_gather) and the optimizer step
// (clip_grad_norm_ + AdamW), measured by wrapping those calls (the Trainer itself is untouched), and the log history.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

async function main() {
  const [modelDir, datasetFile, settingsJson, outDir] = process.argv.slice(2);
  const s = JSON.parse(settingsJson);
  const rank = Number(process.env.RANK ?? 0);
  console.log = () => {}; // the Trainer's printed log dicts (rank 0); the log history goes into the rank file
  const pn = require(path.join(__dirname, '..', 'dist'));
  pn.set_num_threads(s.threads);
  pn.set_exact_mode(Boolean(s.exact));
  const rows = JSON.parse(fs.readFileSync(datasetFile, 'utf8'));

  const model = await pn.AutoModelForCausalLM.from_pretrained(modelDir, { dtype: 'float32' });
  pn.set_seed(42); // as the Python side: set_seed(42) right before get_peft_model gives PEFT's initial prefix
  const pm = pn.get_peft_model(model, new pn.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: s.num_virtual_tokens, prefix_projection: s.prefix_projection }));

  // Where a step's time goes: wrap the calls the Trainer makes (timing only; same arguments, same results).
  const spent = { forward_backward: 0, allreduce: 0, all_gather: 0, optimizer: 0 };
  const timeIt = (key, fn) => async function (...a) {
    const t = performance.now();
    try {
      return await fn.apply(this, a);
    } finally {
      spent[key] += (performance.now() - t) / 1000;
    }
  };
  const forward = pm.forward;
  pm.forward = timeIt('forward_backward', forward);
  const clip = require(path.join(__dirname, '..', 'dist', 'optim', 'clip_grad.js'));
  clip.grad_norm_and_clip = timeIt('optimizer', clip.grad_norm_and_clip);
  for (const m of ['step', 'zero_grad']) pn.AdamW.prototype[m] = timeIt('optimizer', pn.AdamW.prototype[m]);
  const PG = pn.ProcessGroup.prototype;
  PG.average_gradients = timeIt('allreduce', PG.average_gradients);
  PG.all_gather = timeIt('all_gather', PG.all_gather);

  let begin = 0;
  const step_end = [];
  const breakdown = [];
  let last = { ...spent };
  const timer = {
    on_train_begin() {
      begin = performance.now();
      last = { ...spent };
    },
    on_step_end() {
      step_end.push((performance.now() - begin) / 1000);
      breakdown.push(Object.fromEntries(Object.keys(spent).map((k) => [k, spent[k] - last[k]])));
      last = { ...spent };
    },
  };
  const args = new pn.TrainingArguments({
    output_dir: path.join(outDir, `trainer-${rank}`), per_device_train_batch_size: s.batch, gradient_accumulation_steps: 1,
    max_steps: s.max_steps, logging_steps: s.max_steps, learning_rate: s.learning_rate, optim: 'adamw_torch',
    save_strategy: 'no', report_to: 'none', disable_tqdm: true, seed: 42, use_cpu: true,
    ...(s.world > 1 ? { ddp_backend: 'gloo' } : {}),
  });
  const trainer = new pn.Trainer({ model: pm, args, train_dataset: rows, callbacks: [timer] });
  const out = await trainer.train({ handle_sigint: false });
  const info = pn.runtime_info();
  fs.writeFileSync(
    path.join(outDir, `rank-${rank}.json`),
    JSON.stringify({
      side: 'peft-node', rank, world: pn.get_world_size(), threads: info.numThreads, exact: Boolean(s.exact), step_end, breakdown,
      log_history: trainer.state.log_history, train_loss: out.training_loss, peak_rss_mb: process.resourceUsage().maxRSS / 1024,
      versions: { torch: info.torchVersion, node: process.version, 'peft-node': require('../package.json').version },
    }),
  );
  await pm.dispose();
  await model.dispose();
  await pn.destroy_process_group();
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[rank ${process.env.RANK ?? 0}] ${err.code ?? ''} ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
