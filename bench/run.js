#!/usr/bin/env node
// `npm run bench`: peft-node and Python PEFT side by side on the same weights and batches, in one run.
// Prints a table and one JSON line (also written to bench/results.json). Python comes from PEFT_NODE_BENCH_PYTHON,
// else a venv built once from pip's configured store (~/.cache/peft-node/bench-venv); without it the Python side is
// skipped with a note. Options: --configs tiny,bloom-small,bloom-560m  --repeats N
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { CACHE, ROOT, arg, benchModel, common, findPython: findPythonFor } = require('./common');
const log = (msg) => process.stderr.write(`bench: ${msg}\n`);
const findPython = () => findPythonFor(log);

/** The same deterministic batch for both sides: random ids, the first ~19% of each row a prompt (labels -100). */
function makeBatch(file, vocab, B, T, promptFraction, promptLen) {
  if (fs.existsSync(file)) return;
  let s = 1234567;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const input_ids = Array.from({ length: B }, () => Array.from({ length: T }, () => 5 + Math.floor(rnd() * (vocab - 5))));
  const cut = Math.round(T * promptFraction);
  const labels = input_ids.map((row) => row.map((v, j) => (j < cut ? -100 : v)));
  const attention_mask = input_ids.map((row) => row.map(() => 1));
  const prompt = [input_ids[0].slice(0, promptLen)];
  fs.writeFileSync(file, JSON.stringify({ input_ids, attention_mask, labels, prompt }));
}

/** FLOPs of one prefix-tuning train step (forward + backward to the activations; no weight gradients). */
function stepFlops(c, P) {
  const N = c.batch * c.seq_len, D = c.hidden_size, L = c.n_layer, S = c.seq_len + P;
  const forward = 2 * N * L * 12 * D * D + 2 * N * D * c.vocab_size + 4 * c.batch * c.seq_len * S * D * L;
  return 2 * forward;
}

function runSide(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env } });
  if (r.status !== 0) throw new Error(`${cmd} ${args[0]} failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

function matmulGflops(py) {
  const code = 'import torch,time\na=torch.randn(4096,4096);b=torch.randn(4096,4096);a@b\nts=[]\nfor _ in range(5):\n t=time.perf_counter();a@b;ts.append(time.perf_counter()-t)\nts.sort();print(2*4096**3/ts[2]/1e9)';
  return Number(execFileSync(py, ['-c', code], { encoding: 'utf8' }).trim());
}

function main() {
  const names = arg('--configs', 'tiny,bloom-small,bloom-560m').split(',');
  const repeats = Number(arg('--repeats', common.repeats));
  fs.mkdirSync(CACHE, { recursive: true });
  const py = process.env.PEFT_NODE_BENCH_SKIP_PYTHON ? null : findPython();
  if (!py) log('no Python with torch + transformers + peft: the PEFT side is skipped (set PEFT_NODE_BENCH_PYTHON)');
  const matmul = py ? matmulGflops(py) : null;
  const rows = [];
  for (const name of names) {
    const c = common.configs[name];
    if (!c) throw new Error(`unknown config ${name}`);
    const model = benchModel(name, py, log);
    if (!model) { log(`skipping ${name}: its random weights are made with Python`); continue; }
    const { dir, shape } = model;
    const batchFile = path.join(CACHE, `batch-${name}.json`);
    makeBatch(batchFile, shape.vocab_size, c.batch, c.seq_len, c.prompt_fraction, c.gen_prompt);
    const settings = JSON.stringify({ num_virtual_tokens: common.num_virtual_tokens, prefix_projection: common.prefix_projection, warmup: common.warmup, repeats, learning_rate: common.learning_rate, gen_new: c.gen_new });
    log(`${name}: peft-node`);
    const ours = runSide(process.execPath, [path.join(__dirname, 'node_bench.js'), dir, batchFile, settings]);
    let theirs = null;
    if (py) {
      log(`${name}: Python PEFT`);
      theirs = runSide(py, [path.join(__dirname, 'peft_bench.py'), dir, batchFile, settings]);
    }
    const flops = stepFlops(shape, common.num_virtual_tokens);
    rows.push({ config: name, flops_per_step: flops, matmul_gflops: matmul, ours, theirs });
  }
  const fmt = (v, d = 3) => (v === null || v === undefined ? '—' : Number(v).toFixed(d));
  const lines = ['| config | metric | peft-node | PEFT | ratio | target |', '|---|---|---|---|---|---|'];
  const targets = { train_step_s: ['≤ 0.6', (r) => r <= 0.6], gen_tokens_per_s: ['≥ 3', (r) => r >= 3], peak_rss_mb: ['≤ 0.5', (r) => r <= 0.5], load_s: ['≤ 0.5', (r) => r <= 0.5], forward_s: ['', () => true] };
  for (const r of rows) {
    for (const [k, [target]] of Object.entries(targets)) {
      const a = r.ours[k], b = r.theirs?.[k];
      const ratio = b ? a / b : null;
      lines.push(`| ${r.config} | ${k} | ${fmt(a)} | ${fmt(b)} | ${fmt(ratio, 2)} | ${target} |`);
    }
    const g = r.flops_per_step / 1e9 / r.ours.train_step_s;
    lines.push(`| ${r.config} | train GFLOP/s (vs matmul ${fmt(r.matmul_gflops, 0)}) | ${fmt(g, 1)} | ${fmt(r.theirs ? r.flops_per_step / 1e9 / r.theirs.train_step_s : null, 1)} | ${fmt(r.matmul_gflops ? g / r.matmul_gflops : null, 2)} | ≥ 0.75 |`);
    lines.push(`| ${r.config} | train tokens/s | ${fmt(common.configs[r.config].batch * common.configs[r.config].seq_len / r.ours.train_step_s, 0)} | ${fmt(r.theirs ? common.configs[r.config].batch * common.configs[r.config].seq_len / r.theirs.train_step_s : null, 0)} | | |`);
  }
  console.log(lines.join('\n'));
  const result = { date: new Date().toISOString(), machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, mem_gb: Math.round(os.totalmem() / 2 ** 30) }, rows };
  fs.writeFileSync(path.join(__dirname, 'results.json'), JSON.stringify(result, null, 2));
  console.log(JSON.stringify(result));
}

main();
