#!/usr/bin/env node
'use strict';
/**
 * peft-node's fuzzer: `npm run fuzz [-- --seed 1 --cases 10000]`.
 *
 * Mutates the files users hand to peft-node — model.safetensors (headers, dtypes, shapes, offsets, truncation, data),
 * pytorch_model.bin (zip fields, storages, pickle operands and opcodes), config.json, generation_config.json, sharded indexes, tokenizer.json / tokenizer_config.json /
 * special_tokens_map.json, adapter_config.json + adapter_model.safetensors, dataset JSON / JSON Lines, and Trainer
 * checkpoints — plus public calls given garbage arguments (null options, BigInts, wrong types, absurd sizes) — and
 * drives the public API over each case (load, then forward/backward, generate, tokenize, collate,
 * resume training). Every case must load or be rejected with a PeftNodeError whose code is documented
 * (ERROR_CODES); a crash, an abort, a hang (per-case time limit), an unnamed error (TypeError, RangeError, an
 * undocumented code) or a broken invariant fails the run.
 *
 * Cases run in child processes (scripts/fuzz/worker.js), many per child; when a child dies, the case it was running
 * is reported (and re-run alone to confirm), and the remaining cases continue in a new child. Cases are pure
 * functions of (--seed, case id): `--case ID` replays one, `--dump DIR` writes its files.
 *
 * Options: --seed N (1)  --cases N (10000)  --jobs N (min(2, cpus))  --timeout-ms N per case (10000)
 *          --targets a,b (all: safetensors, config, generation_config, sharded, tokenizer, adapter, dataset, checkpoint,
 *          bin = pytorch_model.bin: zip + pickle, from test/fixtures/bin; api = misused public calls)
 *          --allow-torch (count ERR_TORCH from a mutated file as a pass; by default it fails: a corrupt file is a user
 *          mistake and deserves a specific code)  --json (print the summary as one JSON line)  --out FILE (every
 *          result as JSON Lines)  --case ID  --dump DIR  --keep (keep the temporary directory)  --quiet
 *          --no-build (use dist/ as it is; by default it is rebuilt when older than lib/)
 * Exit status: 0 when every case passed, 1 on any failure, 2 on a usage or setup error.
 */
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const M = require('./mutate');
const T = require('./targets');

const ROOT = path.resolve(__dirname, '..', '..');
const WORKER = path.join(__dirname, 'worker.js');

function parseArgs(argv) {
  const o = { seed: 1, cases: 10000, jobs: Math.max(1, Math.min(2, os.availableParallelism?.() ?? os.cpus().length)), timeoutMs: 10000,
    targets: Object.keys(T.WEIGHTS), json: false, out: null, case: null, dump: null, keep: false, quiet: false, allowTorch: false, build: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    const int = (v, name) => {
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < 0) usage(`${name} must be a non-negative integer, got ${v}`);
      return n;
    };
    if (a === '--seed') o.seed = int(val(), '--seed');
    else if (a === '--cases') o.cases = int(val(), '--cases');
    else if (a === '--jobs') o.jobs = Math.max(1, int(val(), '--jobs'));
    else if (a === '--timeout-ms') o.timeoutMs = Math.max(100, int(val(), '--timeout-ms'));
    else if (a === '--targets') {
      o.targets = val().split(',').filter(Boolean);
      for (const t of o.targets) if (!(t in T.WEIGHTS)) usage(`unknown target '${t}' (have: ${Object.keys(T.WEIGHTS).join(', ')})`);
    } else if (a === '--json') o.json = true;
    else if (a === '--out') o.out = val();
    else if (a === '--case') o.case = int(val(), '--case');
    else if (a === '--dump') o.dump = val();
    else if (a === '--keep') o.keep = true;
    else if (a === '--quiet') o.quiet = true;
    else if (a === '--allow-torch') o.allowTorch = true;
    else if (a === '--no-build') o.build = false;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(fs.readFileSync(__filename, 'utf8').split('*/')[0].replace(/^#!.*\n'use strict';\n\/\*\*\n/, '').replace(/^ \* ?/gm, ''));
      process.exit(0);
    } else usage(`unknown option ${a}`);
  }
  return o;
}

function usage(msg) {
  process.stderr.write(`fuzz: ${msg} (see --help)\n`);
  process.exit(2);
}

/** dist/ is what users get; build it when missing or older than lib/. */
function ensureDist(log) {
  const index = path.join(ROOT, 'dist', 'index.js');
  const newest = (dir) => {
    let t = 0;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) t = Math.max(t, newest(p));
      else if (e.name.endsWith('.ts')) t = Math.max(t, fs.statSync(p).mtimeMs);
    }
    return t;
  };
  const exists = fs.existsSync(index);
  if (exists && fs.statSync(index).mtimeMs >= newest(path.join(ROOT, 'lib'))) return;
  log(exists ? 'dist/ is older than lib/: rebuilding' : 'dist/ is missing: building');
  const r = spawnSync(process.execPath, [require.resolve('typescript/bin/tsc', { paths: [ROOT] }), '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) {
    if (!exists) usage('building dist/ failed (npx tsc -p tsconfig.build.json)');
    log('warning: rebuilding dist/ failed; fuzzing the existing build');
  }
}

function childEnv() {
  // One intra-op thread per worker: the jobs are the parallelism.
  return { ...process.env, OMP_NUM_THREADS: '1', MKL_NUM_THREADS: '1' };
}

function runSetup(dir) {
  const r = spawnSync(process.execPath, ['--no-warnings', WORKER, '--setup', dir], { env: childEnv(), encoding: 'utf8', timeout: 180000 });
  if (r.status !== 0) usage(`template setup failed (status ${r.status}, signal ${r.signal}):\n${r.stderr}`);
}

/** One worker child and the cases it has been sent but not answered (the first one is running). */
class Runner {
  constructor(pool, index) {
    this.pool = pool;
    this.index = index;
    this.start();
  }

  start() {
    const { opts, work, templates } = this.pool;
    this.outstanding = [];
    this.ready = false;
    this.stderr = '';
    this.buffer = '';
    this.dead = false;
    this.last = null;
    this.child = spawn(process.execPath, ['--no-warnings', WORKER, '--templates', templates, '--work', work], {
      env: childEnv(),
      cwd: work, // a core dump from a crashing case lands in the temporary directory
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stdin.on('error', () => undefined); // EPIPE when it dies: handled by 'exit'
    this.child.stdout.on('data', (d) => this.onData(d));
    this.child.stderr.on('data', (d) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.child.on('exit', (code, signal) => this.onExit(code, signal));
    this.arm(60000); // startup: loading the addon and templates
    this.pool.spawned++;
    void opts;
  }

  arm(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.onTimeout(), ms);
  }

  onData(d) {
    this.buffer += d;
    let nl;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + 1);
      if (!line.trim()) continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        this.stderr += `\n[stdout] ${line.slice(0, 300)}`;
        continue;
      }
      if (msg.ready) {
        this.ready = true;
        this.feed();
        continue;
      }
      const c = this.outstanding.shift();
      if (!c || c.id !== msg.id) {
        this.pool.fatal(`protocol error: got a result for case ${msg.id}, expected ${c && c.id}`);
        return;
      }
      this.pool.record(c, msg);
      this.last = c;
      this.feed();
    }
  }

  /** Keeps a few cases queued in the child so it never waits for the parent. */
  feed() {
    if (this.dead || !this.ready) return;
    while (this.outstanding.length < 8) {
      const c = this.pool.next();
      if (!c) break;
      this.outstanding.push(c);
      this.child.stdin.write(JSON.stringify(c) + '\n');
    }
    if (this.outstanding.length) this.arm(this.pool.opts.timeoutMs);
    else {
      clearTimeout(this.timer);
      if (this.pool.done()) this.child.stdin.end();
    }
  }

  onTimeout() {
    if (this.dead) return;
    const c = this.outstanding[0];
    if (!this.ready) this.stderr += '\n[fuzz] worker did not become ready within 60 s';
    this.hung = c ? { case: c, stderr: this.stderr } : null;
    this.child.kill('SIGKILL');
  }

  onExit(code, signal) {
    this.dead = true;
    clearTimeout(this.timer);
    const pool = this.pool;
    if (this.hung) {
      pool.record(this.hung.case, { id: this.hung.case.id, status: 'hang', message: `no answer within ${pool.opts.timeoutMs} ms`, stderr: this.hung.stderr.slice(-1500) });
      this.outstanding.shift();
    } else if (this.outstanding.length) {
      const c = this.outstanding.shift();
      pool.record(c, { id: c.id, status: 'crash', message: `worker died (exit code ${code}, signal ${signal}) while running this case`, stderr: this.stderr.slice(-1500) });
    } else if (!this.ready) {
      pool.startupFailures++;
      if (pool.startupFailures > 3) return pool.fatal(`workers fail to start (exit ${code}, signal ${signal}):\n${this.stderr}`);
    } else if ((code !== 0 || signal) && this.last) {
      // Died after answering (e.g. an unhandled rejection fired late): blame the last case it ran.
      const c = this.last;
      pool.results.set(c.id, { ...pool.results.get(c.id), status: 'crash', message: `worker died (exit code ${code}, signal ${signal}) right after this case`, stderr: this.stderr.slice(-1500) });
    }
    this.hung = null;
    pool.requeue(this.outstanding);
    this.outstanding = [];
    if (!pool.done()) this.start();
    else pool.runnerFinished();
  }
}

class Pool {
  constructor(opts, cases, templates, work) {
    this.opts = opts;
    this.queue = cases.slice();
    this.total = cases.length;
    this.templates = templates;
    this.work = work;
    this.results = new Map();
    this.spawned = 0;
    this.startupFailures = 0;
    this.finished = 0;
    this.lastProgress = 0;
  }

  run() {
    return new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      const n = Math.min(this.opts.jobs, Math.max(1, this.total));
      this.runners = Array.from({ length: n }, (_, i) => new Runner(this, i));
      if (this.total === 0) resolve();
    });
  }

  next() {
    return this.queue.shift();
  }
  requeue(cases) {
    this.queue.unshift(...cases);
  }
  done() {
    return this.results.size >= this.total;
  }

  record(c, msg) {
    this.results.set(c.id, { ...msg, id: c.id, target: c.target, seed: c.seed });
    if (!this.opts.quiet && this.results.size - this.lastProgress >= 1000) {
      this.lastProgress = this.results.size;
      process.stderr.write(`fuzz: ${this.results.size}/${this.total} cases\n`);
    }
    if (this.done()) for (const r of this.runners ?? []) if (!r.dead) r.feed();
  }

  runnerFinished() {
    if (++this.finished === this.runners.length && this.done()) this.resolve();
  }

  fatal(msg) {
    for (const r of this.runners ?? []) if (!r.dead) r.child.kill('SIGKILL');
    this.reject(new Error(msg));
  }
}

/** Re-runs one case alone in a fresh worker: does it fail the same way? */
function confirm(opts, c, templates, work) {
  const r = spawnSync(process.execPath, ['--no-warnings', WORKER, '--templates', templates, '--work', work], {
    env: childEnv(),
    cwd: work,
    input: JSON.stringify(c) + '\n',
    encoding: 'utf8',
    timeout: opts.timeoutMs + 5000,
    killSignal: 'SIGKILL',
  });
  const lines = (r.stdout || '').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((m) => m.id === c.id);
  if (lines.length) return { status: lines[0].status, detail: lines[0] };
  if (r.error && r.error.code === 'ETIMEDOUT') return { status: 'hang' };
  return { status: 'crash', detail: { exitCode: r.status, signal: r.signal, stderr: (r.stderr || '').slice(-1500) } };
}

const FAILING = new Set(['crash', 'hang', 'unnamed', 'invariant', 'harness']);

function isFailure(r, opts) {
  return FAILING.has(r.status) || (!opts.allowTorch && r.status === 'named' && r.code === 'ERR_TORCH');
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const log = (m) => (opts.quiet ? undefined : process.stderr.write(`fuzz: ${m}\n`));
  if (opts.build) ensureDist(log);
  else if (!fs.existsSync(path.join(ROOT, 'dist', 'index.js'))) usage('dist/ is missing (build it: npx tsc -p tsconfig.build.json)');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peft-node-fuzz-'));
  const templates = path.join(tmp, 'templates');
  const work = path.join(tmp, 'work');
  fs.mkdirSync(work);
  const cleanup = () => {
    if (!opts.keep) fs.rmSync(tmp, { recursive: true, force: true });
  };
  try {
    const t0 = performance.now();
    runSetup(templates);
    const setupMs = performance.now() - t0;
    const binDir = path.join(templates, 'bin');
    if (opts.targets.includes('bin') && !(fs.existsSync(binDir) && fs.readdirSync(binDir).length)) {
      log('no pytorch_model.bin templates (test/fixtures/bin): skipping the bin target');
      opts.targets = opts.targets.filter((t) => t !== 'bin');
      if (!opts.targets.length) usage('no target left to fuzz');
    }
    const ids = opts.case !== null ? [opts.case] : Array.from({ length: opts.cases }, (_, i) => i);
    const cases = ids.map((id) => ({ id, target: T.targetOf(opts.seed, id, opts.targets), seed: M.caseSeed(opts.seed, id) }));

    if (opts.dump) {
      const c = cases[0];
      const r = spawnSync(process.execPath, ['--no-warnings', WORKER, '--templates', templates, '--dump', path.resolve(opts.dump), '--target', c.target, '--seed', String(c.seed)], { encoding: 'utf8' });
      if (r.status !== 0) usage(`dump failed: ${r.stderr}`);
      process.stdout.write(`case ${c.id} (${c.target}, seed ${c.seed}) written to ${path.resolve(opts.dump)}\n`);
      return 0;
    }

    log(`seed ${opts.seed}, ${cases.length} cases, ${opts.jobs} job(s), ${opts.timeoutMs} ms per case; templates in ${Math.round(setupMs)} ms`);
    const start = performance.now();
    const pool = new Pool(opts, cases, templates, work);
    await pool.run();
    const seconds = (performance.now() - start) / 1000;
    const results = [...pool.results.values()].sort((a, b) => a.id - b.id);

    // Confirm each crash / hang in isolation.
    for (const r of results)
      if (r.status === 'crash' || r.status === 'hang') {
        const again = confirm(opts, { id: r.id, target: r.target, seed: r.seed }, templates, work);
        r.confirmed = again.status === r.status;
        r.alone = again;
      }

    const summary = summarize(opts, results, seconds, pool.spawned);
    if (opts.out) fs.writeFileSync(opts.out, results.map((r) => JSON.stringify(r)).join('\n') + '\n');
    if (opts.json) process.stdout.write(JSON.stringify(summary) + '\n');
    else printSummary(summary);
    return summary.failures.length ? 1 : 0;
  } finally {
    cleanup();
  }
}

function summarize(opts, results, seconds, spawned) {
  const byStatus = {};
  const byTarget = {};
  const byCode = {};
  for (const r of results) {
    byStatus[r.status] = (byStatus[r.status] ?? 0) + 1;
    const t = (byTarget[r.target] ??= {});
    const key = r.status === 'named' ? r.code : r.status;
    t[key] = (t[key] ?? 0) + 1;
    if (r.status === 'named') byCode[r.code] = (byCode[r.code] ?? 0) + 1;
  }
  const failures = results.filter((r) => isFailure(r, opts));
  const slowest = results.reduce((m, r) => (r.ms !== undefined && r.ms > (m?.ms ?? -1) ? r : m), null);
  return {
    seed: opts.seed,
    cases: results.length,
    seconds: Math.round(seconds * 100) / 100,
    cases_per_second: Math.round((results.length / seconds) * 10) / 10,
    jobs: opts.jobs,
    workers_started: spawned,
    by_status: byStatus,
    by_code: byCode,
    by_target: byTarget,
    slowest_case: slowest ? { id: slowest.id, target: slowest.target, ms: slowest.ms } : null,
    failures: failures.map((r) => ({ id: r.id, target: r.target, status: r.status, code: r.code, name: r.name, message: r.message, confirmed: r.confirmed, stderr: r.stderr, stack: r.stack,
      replay: `node scripts/fuzz/run.js --seed ${opts.seed} --case ${r.id}` })),
  };
}

function printSummary(s) {
  const lines = [];
  lines.push(`fuzz: seed ${s.seed}: ${s.cases} cases in ${s.seconds} s (${s.cases_per_second}/s, ${s.jobs} job(s), ${s.workers_started} worker(s) started)`);
  lines.push(`  outcomes: ${Object.entries(s.by_status).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  lines.push(`  error codes: ${Object.entries(s.by_code).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  for (const [t, counts] of Object.entries(s.by_target).sort())
    lines.push(`  ${t.padEnd(18)} ${Object.entries(counts).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  if (s.slowest_case) lines.push(`  slowest case: #${s.slowest_case.id} (${s.slowest_case.target}) ${s.slowest_case.ms} ms`);
  if (s.failures.length) {
    lines.push(`  FAILURES: ${s.failures.length}`);
    for (const f of s.failures.slice(0, 25)) {
      lines.push(`  - #${f.id} ${f.target}: ${f.status}${f.code ? ` ${f.code}` : ''}${f.name ? ` ${f.name}` : ''}: ${String(f.message).split('\n')[0].slice(0, 240)}`);
      if (f.confirmed !== undefined) lines.push(`      alone in a fresh worker: ${f.confirmed ? 'fails the same way' : 'does not reproduce'}`);
      if (f.stack) lines.push(f.stack.split('\n').slice(1, 4).map((l) => `      ${l.trim()}`).join('\n'));
      if (f.stderr) lines.push(`      stderr: ${f.stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 400)}`);
      lines.push(`      replay: ${f.replay}  (add --dump DIR for its files)`);
    }
  } else lines.push('  no crash, hang, unnamed error or broken invariant');
  process.stdout.write(lines.join('\n') + '\n');
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`fuzz: ${err.message}\n`);
    process.exit(2);
  },
);
