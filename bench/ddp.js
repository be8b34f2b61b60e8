#!/usr/bin/env node
// `npm run bench:ddp`: data-parallel training, peft-node vs HF Trainer + PEFT, side by side in one run.
// Full Trainer runs (prefix tuning, adamw_torch, save_strategy 'no', one log at the end) on a synthetic tokenized
// dataset written once as JSON (equal-length rows, the first ~19% a prompt with labels -100), same weights:
//   ddp2:   2 processes × per-device batch B/2 × 1 thread — peft-node through launch(), HF Trainer under
//           `python -m torch.distributed.run --nproc-per-node 2` (ddp_backend 'gloo', use_cpu)
//   single: 1 process × batch B × 2 threads — peft-node and HF Trainer in a plain process
// (B = the config's batch, 4.) Per run: the median step time (differences of on_step_end timestamps) after --warmup
// steps; per scenario and side: the median over --repeats runs (interleaved). Checks that the final logged losses of
// both sides agree (1e-3 relative). Prints a table and one JSON line (also written to bench/results-ddp.json).
// Python comes from PEFT_NODE_BENCH_PYTHON or the venv bench/run.js builds. Options:
//   --configs bloom-small[,tiny]  --repeats 3  --steps 10  --warmup 2  --rows 64  --seq-len N  --exact
'use strict';
const { execFileSync, spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const { CACHE, ROOT, arg, benchModel, common, findPython: findPythonFor } = require('./common');
const log = (msg) => process.stderr.write(`bench:ddp: ${msg}\n`);
const LOSS_RTOL = 1e-3;
const NPROC = 2;

const findPython = () => findPythonFor(log);

/** N equal-length rows (no padding on either side): random ids, the first ~19% of each row a prompt (labels -100). */
function makeDataset(file, vocab, N, T, promptFraction) {
  if (fs.existsSync(file)) return;
  let s = 7654321;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const cut = Math.round(T * promptFraction);
  const rows = Array.from({ length: N }, () => {
    const input_ids = Array.from({ length: T }, () => 5 + Math.floor(rnd() * (vocab - 5)));
    return { input_ids, attention_mask: input_ids.map(() => 1), labels: input_ids.map((v, j) => (j < cut ? -100 : v)) };
  });
  fs.writeFileSync(file, JSON.stringify(rows));
}

const median = (xs) => {
  const a = xs.filter((x) => Number.isFinite(x)).sort((x, y) => x - y);
  if (!a.length) return null;
  const m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
};

/** Env without a launcher's variables (a plain single process), plus `extra`. */
function cleanEnv(extra) {
  const env = { ...process.env, ...extra };
  for (const k of ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'TORCHELASTIC_USE_AGENT_STORE'])
    delete env[k];
  return env;
}

function runProcess(cmd, args, env) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    p.stdout.on('data', () => {});
    p.stderr.on('data', (d) => (err = (err + d).slice(-20000)));
    p.once('error', reject);
    p.once('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.slice(0, 2).join(' ')} ${signal ?? `exited ${code}`}:\n${err}`))));
  });
}

/** A TCP port that was free a moment ago (torchrun's --master-port). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** One run of one side in one scenario; resolves with each rank's record (rank order) and the wall time. */
async function runOnce(side, scenario, ctx) {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), `peft-node-ddp-${side}-`));
  const settings = JSON.stringify({ ...ctx.settings, world: scenario.world, batch: scenario.batch, threads: scenario.threads });
  const t0 = performance.now();
  try {
    if (side === 'peft-node') {
      const workerArgs = [path.join(__dirname, 'ddp_node_worker.js'), ctx.dir, ctx.dataset, settings, out];
      if (scenario.world > 1) {
        const r = await ctx.pn.launch({
          nproc_per_node: scenario.world, command: process.execPath, args: workerArgs,
          env: cleanEnv({ OMP_NUM_THREADS: String(scenario.threads) }), log: (l) => log(`launch: ${l}`),
        });
        if (r.exit_code !== 0) throw new Error(`peft-node launch failed: ${JSON.stringify(r.failures)}`);
      } else {
        await runProcess(process.execPath, workerArgs, cleanEnv({ OMP_NUM_THREADS: String(scenario.threads) }));
      }
    } else {
      const workerArgs = [path.join(__dirname, 'ddp_peft_worker.py'), ctx.dir, ctx.dataset, settings, out];
      const env = cleanEnv({ OMP_NUM_THREADS: String(scenario.threads), PYTHONWARNINGS: 'ignore' });
      if (scenario.world > 1) {
        const port = await freePort();
        await runProcess(ctx.py, ['-m', 'torch.distributed.run', '--nproc-per-node', String(scenario.world), '--master-addr', '127.0.0.1', '--master-port', String(port), ...workerArgs], env);
      } else {
        await runProcess(ctx.py, workerArgs, env);
      }
    }
    const wall_s = (performance.now() - t0) / 1000;
    const ranks = Array.from({ length: scenario.world }, (_, r) => JSON.parse(fs.readFileSync(path.join(out, `rank-${r}.json`), 'utf8')));
    return { ranks, wall_s };
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

/** A run's numbers: median step time after warm-up (rank 0's clock), the breakdown medians, the final losses. */
function summarize(run, warmup) {
  const r0 = run.ranks[0];
  const steps = r0.step_end.map((t, i) => t - (i ? r0.step_end[i - 1] : 0));
  const timed = steps.slice(warmup);
  const parts = {};
  for (const key of Object.keys(r0.breakdown[0] ?? {})) parts[key] = median(r0.breakdown.slice(warmup).map((b) => b[key]));
  const logged = r0.log_history.find((e) => 'loss' in e);
  return {
    step_s: median(timed), steps_s: steps, breakdown_s: parts, loss: logged?.loss ?? null, train_loss: r0.train_loss,
    threads: run.ranks.map((r) => r.threads), peak_rss_mb: Math.max(...run.ranks.map((r) => r.peak_rss_mb)), wall_s: run.wall_s,
  };
}

async function main() {
  const names = arg('--configs', 'bloom-small').split(',');
  const repeats = Number(arg('--repeats', 3));
  const maxSteps = Number(arg('--steps', 10));
  const warmup = Number(arg('--warmup', common.warmup));
  const nRows = Number(arg('--rows', 64));
  const exact = process.argv.includes('--exact');
  if (!(maxSteps > warmup)) throw new Error(`--steps (${maxSteps}) must exceed --warmup (${warmup})`);
  fs.mkdirSync(CACHE, { recursive: true });
  const pn = require(path.join(ROOT, 'dist'));
  const py = findPython();
  if (!py) throw new Error('no Python with torch + transformers + peft + accelerate (set PEFT_NODE_BENCH_PYTHON): the DDP bench needs both sides');
  const pyVersions = JSON.parse(execFileSync(py, ['-c', 'import json,torch,transformers,peft,accelerate;print(json.dumps({"torch":torch.__version__,"transformers":transformers.__version__,"peft":peft.__version__,"accelerate":accelerate.__version__}))'], { encoding: 'utf8' }));
  const info = pn.runtime_info();
  const rows = [];
  for (const name of names) {
    const c = common.configs[name];
    if (!c) throw new Error(`unknown config ${name}`);
    const { dir, shape } = benchModel(name, py, log);
    const vocab = shape.vocab_size;
    const T = Number(arg('--seq-len', c.seq_len ?? 128));
    const B = c.batch;
    if (B % NPROC) throw new Error(`${name}: batch ${B} does not split over ${NPROC} processes`);
    if (nRows < maxSteps * B) log(`${name}: ${nRows} rows < ${maxSteps} steps × ${B}: the run crosses an epoch boundary`);
    const dataset = path.join(CACHE, `ddp-dataset-${name}-${nRows}x${T}.json`);
    makeDataset(dataset, vocab, nRows, T, c.prompt_fraction);
    const settings = { num_virtual_tokens: common.num_virtual_tokens, prefix_projection: common.prefix_projection, learning_rate: common.learning_rate, max_steps: maxSteps, exact };
    const ctx = { pn, py, dir, dataset, settings };
    const scenarios = [
      { id: 'ddp2', label: `${NPROC} proc × batch ${B / NPROC} × 1 thread`, world: NPROC, batch: B / NPROC, threads: 1 },
      { id: 'single', label: `1 proc × batch ${B} × ${NPROC} threads`, world: 1, batch: B, threads: NPROC },
    ];
    const runs = Object.fromEntries(scenarios.map((s) => [s.id, { 'peft-node': [], peft: [] }]));
    for (let rep = 0; rep < repeats; rep++) {
      for (const sc of scenarios) {
        // Alternate which side goes first, so that drift on this shared machine does not favour one.
        const order = rep % 2 ? ['peft', 'peft-node'] : ['peft-node', 'peft'];
        for (const side of order) {
          log(`${name} ${sc.id} ${side} (repeat ${rep + 1}/${repeats})`);
          const s = summarize(await runOnce(side, sc, ctx), warmup);
          log(`  median step ${s.step_s.toFixed(3)} s, loss ${s.loss}, wall ${s.wall_s.toFixed(1)} s`);
          runs[sc.id][side].push(s);
        }
      }
    }
    const result = { config: name, seq_len: T, batch: B, rows: nRows, max_steps: maxSteps, warmup, scenarios: {} };
    for (const sc of scenarios) {
      const side = (k) => {
        const rs = runs[sc.id][k];
        const parts = {};
        for (const key of Object.keys(rs[0].breakdown_s)) parts[key] = median(rs.map((r) => r.breakdown_s[key]));
        return {
          step_s: median(rs.map((r) => r.step_s)), runs_step_s: rs.map((r) => r.step_s), breakdown_s: parts,
          loss: rs[0].loss, train_loss: rs[0].train_loss, threads: rs[0].threads, peak_rss_mb: median(rs.map((r) => r.peak_rss_mb)),
          wall_s: median(rs.map((r) => r.wall_s)), samples_per_s: B / median(rs.map((r) => r.step_s)),
        };
      };
      const ours = side('peft-node'), theirs = side('peft');
      const loss_rel = Math.abs(ours.loss - theirs.loss) / Math.abs(theirs.loss);
      result.scenarios[sc.id] = { label: sc.label, world: sc.world, per_device_batch: sc.batch, threads_per_process: sc.threads, ours, theirs, ratio: ours.step_s / theirs.step_s, loss_rel_diff: loss_rel, loss_ok: loss_rel <= LOSS_RTOL };
    }
    const a = result.scenarios.ddp2, b = result.scenarios.single;
    // Scaling of DDP against one process on the same cores and the same global batch: > 1 means DDP is faster.
    result.ddp_speedup = { 'peft-node': b.ours.step_s / a.ours.step_s, peft: b.theirs.step_s / a.theirs.step_s };
    // Same global batch, same seed: both scenarios should train the same (peft-node's README: within 1e-5).
    result.ddp_vs_single_loss_rel = { 'peft-node': Math.abs(a.ours.loss - b.ours.loss) / Math.abs(b.ours.loss), peft: Math.abs(a.theirs.loss - b.theirs.loss) / Math.abs(b.theirs.loss) };
    rows.push(result);
  }

  const fmt = (v, d = 3) => (v === null || v === undefined || !Number.isFinite(v) ? '—' : Number(v).toFixed(d));
  const lines = ['| config | scenario | peft-node step s | PEFT step s | ratio | peft-node loss | PEFT loss | loss rel diff |', '|---|---|---|---|---|---|---|---|'];
  for (const r of rows) {
    for (const sc of Object.values(r.scenarios))
      lines.push(`| ${r.config} | ${sc.label} | ${fmt(sc.ours.step_s)} | ${fmt(sc.theirs.step_s)} | ${fmt(sc.ratio, 2)} | ${fmt(sc.ours.loss, 6)} | ${fmt(sc.theirs.loss, 6)} | ${sc.loss_rel_diff.toExponential(1)}${sc.loss_ok ? '' : ' FAIL'} |`);
    lines.push(`| ${r.config} | DDP speed-up (1-process step / 2-process step) | ${fmt(r.ddp_speedup['peft-node'], 2)} | ${fmt(r.ddp_speedup.peft, 2)} | | | | |`);
    lines.push(`| ${r.config} | loss rel diff, 2 processes vs 1 | ${r.ddp_vs_single_loss_rel['peft-node'].toExponential(1)} | ${r.ddp_vs_single_loss_rel.peft.toExponential(1)} | | | | |`);
  }
  lines.push('', '| config | scenario | side | where a step goes (medians, s) |', '|---|---|---|---|');
  for (const r of rows)
    for (const sc of Object.values(r.scenarios))
      for (const [k, s] of [['peft-node', sc.ours], ['PEFT', sc.theirs]])
        lines.push(`| ${r.config} | ${sc.label} | ${k} | ${Object.entries(s.breakdown_s).map(([n, v]) => `${n} ${fmt(v)}`).join(', ')} |`);
  console.log(lines.join('\n'));
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, mem_gb: Math.round(os.totalmem() / 2 ** 30), loadavg_1m: os.loadavg()[0] },
    versions: { 'peft-node': require('../package.json').version, libtorch: info.torchVersion, node: process.version, python: pyVersions },
    mode: exact ? 'exact' : 'fast', rows,
  };
  fs.writeFileSync(path.join(__dirname, 'results-ddp.json'), JSON.stringify(result, null, 2));
  console.log(JSON.stringify(result));
  if (rows.some((r) => Object.values(r.scenarios).some((s) => !s.loss_ok))) {
    log(`the final logged losses differ by more than ${LOSS_RTOL} relative`);
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
