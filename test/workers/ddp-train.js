// A data-parallel training worker for test/distributed.test.ts, started once per rank (by the test or through
// launch()) with RANK / WORLD_SIZE / MASTER_* set. The job comes as JSON in PEFT_NODE_TEST_JOB; each rank writes what
// it saw to <out>/rank-<RANK>.json. Plain JS over dist/, so that it runs as its own process like a user's script.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const pn = require('../../dist/index.js');

async function main() {
  const job = JSON.parse(process.env.PEFT_NODE_TEST_JOB);
  const rank = Number(process.env.RANK ?? 0);
  if (job.threads) pn.set_num_threads(job.threads);
  pn.set_exact_mode(Boolean(job.exact));
  const raw = JSON.parse(fs.readFileSync(job.dataset, 'utf8'));
  const rows = (Array.isArray(raw) ? raw : raw.tokenized).slice(0, job.rows ?? undefined);
  const model = await pn.AutoModelForCausalLM.from_pretrained(job.model);
  pn.set_seed(42);
  const config = new pn.PrefixTuningConfig({
    task_type: 'CAUSAL_LM',
    num_virtual_tokens: job.num_virtual_tokens ?? 4,
    prefix_projection: Boolean(job.prefix_projection),
  });
  const pm = pn.get_peft_model(model, config);
  // DataCollatorForSeq2Seq with the fixture tokenizer: left padding with <pad> = 3, labels with -100.
  const collate = (features) => {
    const T = Math.max(...features.map((r) => r.input_ids.length));
    const left = (a, v) => [...new Array(T - a.length).fill(v), ...a];
    return {
      input_ids: features.map((r) => left(r.input_ids, 3)),
      attention_mask: features.map((r) => left(r.attention_mask, 0)),
      labels: features.map((r) => left(r.labels, -100)),
    };
  };
  const args = new pn.TrainingArguments({ disable_tqdm: true, report_to: 'none', ...job.args });
  const callbacks = [];
  if (job.exit_at_step) {
    // Dies like a crashed worker: no cleanup, mid-run.
    callbacks.push({ on_step_end: (_a, state) => { if (rank === job.exit_rank && state.global_step === job.exit_at_step) process.kill(process.pid, 'SIGKILL'); } });
  }
  const trainer = new pn.Trainer({ model: pm, args, train_dataset: rows, data_collator: collate, callbacks });
  const t0 = performance.now();
  const outp = await trainer.train({ resume_from_checkpoint: job.resume, handle_sigint: true });
  const params = {};
  for (const [n, p] of pm.named_parameters()) if (p.requires_grad) params[n] = Array.from((await p.data()).data);
  fs.mkdirSync(job.out, { recursive: true });
  fs.writeFileSync(
    path.join(job.out, `rank-${rank}.json`),
    JSON.stringify({ rank, log_history: trainer.state.log_history, output: outp, params, state: { global_step: trainer.state.global_step, epoch: trainer.state.epoch, total_flos: trainer.state.total_flos, is_world_process_zero: trainer.state.is_world_process_zero }, ms: performance.now() - t0 }),
  );
  await pm.dispose();
  await model.dispose();
  await pn.destroy_process_group();
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[rank ${process.env.RANK}] ${err.code ?? ''} ${err.message}\n`);
    process.exit(err.code === 'ERR_DISTRIBUTED' ? 3 : 1);
  },
);
