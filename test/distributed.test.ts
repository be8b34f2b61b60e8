/**
 * Data-parallel training (issue #10) on loopback with Gloo: each rank is its own Node process (test/workers/
 * ddp-train.js) started with torchrun's variables, directly or through launch() / `peft-node train --nproc`.
 *
 * - Against the REAL HF Trainer under torchrun (scripts/gen_fixtures_ddp.py): in exact mode on one thread per rank, on
 *   the CPU the fixtures were made on (ddp/made_on.json), the logged losses, grad norms, total_flos, each rank's
 *   train_loss and the final prefix are bit-identical; on another CPU the same runs are held to the cross-CPU
 *   tolerances of test/tolerances.ts (total_flos, steps, epochs and learning rates still exactly).
 * - 2 processes × batch 2 against 1 process × batch 4 (our own runs, default fast mode): prefix within 1e-5
 *   relative, logged losses within 1e-5.
 * - Faults: a killed worker, a busy port, an unreachable master, ranks that disagree; exact resume of a 2-process run.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { PeftNodeError, destroy_process_group, init_process_group, launch } from '../lib';
import { free_port } from '../lib/distributed/launch';
import { dataloader_length, float32_mean, shard_batches } from '../lib/trainer/data_parallel';
import { readSafetensors } from '../lib/utils/safetensors';
import { ErrorLog, FIXTURES, asNumbers, fixtureFidelity, maxRelErr, tmpDir } from './helpers';
import { trainerTolerance } from './tolerances';

const DDP = path.join(FIXTURES, 'ddp');
const fidelity = fixtureFidelity(DDP);
const WORKER = path.join(__dirname, 'workers', 'ddp-train.js');
const CLI = path.join(__dirname, '..', 'bin', 'peft-node.js');
const TIMING = new Set(['train_runtime', 'train_samples_per_second', 'train_steps_per_second']);

interface RankResult {
  rank: number;
  log_history: Record<string, number>[];
  output: { global_step: number; training_loss: number; metrics: Record<string, number>; interrupted: boolean };
  params: Record<string, number[]>;
  state: { global_step: number; epoch: number; total_flos: number; is_world_process_zero: boolean };
}

interface Job {
  exact?: boolean;
  threads?: number;
  rows?: number;
  num_virtual_tokens?: number;
  prefix_projection?: boolean;
  args: Record<string, unknown>;
  resume?: string | boolean;
  exit_at_step?: number;
  exit_rank?: number;
}

let scratch: string;
beforeAll(() => {
  scratch = tmpDir('peft-node-ddp-');
});
afterAll(() => {
  fs.rmSync(scratch, { recursive: true, force: true });
});

function jobEnv(job: Job, out: string): NodeJS.ProcessEnv {
  const full = { model: path.join(FIXTURES, 'tiny-bloom'), dataset: path.join(FIXTURES, 'trainer', 'dataset.json'), threads: 1, out, ...job };
  return { ...process.env, PEFT_NODE_TEST_JOB: JSON.stringify(full) };
}

function exited(p: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  let stderr = '';
  p.stderr?.on('data', (d) => (stderr += d));
  return new Promise((resolve) => p.once('exit', (code, signal) => resolve({ code, signal, stderr })));
}

/** Starts `world` workers by hand (as any launcher would) and waits for all of them. */
async function runRanks(job: Job, world: number, name: string, perRank: (rank: number) => Partial<Job> = () => ({})) {
  const out = path.join(scratch, name);
  const port = await free_port();
  const procs = Array.from({ length: world }, (_, rank) =>
    spawn(process.execPath, [WORKER], {
      env: {
        ...jobEnv({ ...job, ...perRank(rank) }, out),
        RANK: String(rank),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(rank),
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(port),
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    }),
  );
  const exits = await Promise.all(procs.map(exited));
  return { exits, results: () => Array.from({ length: world }, (_, r) => JSON.parse(fs.readFileSync(path.join(out, `rank-${r}.json`), 'utf8')) as RankResult) };
}

/** One process, no launcher variables. */
async function runSingle(job: Job, name: string): Promise<RankResult> {
  const out = path.join(scratch, name);
  const env = jobEnv(job, out);
  for (const k of ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete env[k];
  const r = await exited(spawn(process.execPath, [WORKER], { env, stdio: ['ignore', 'ignore', 'pipe'] }));
  expect(r).toMatchObject({ code: 0 });
  return JSON.parse(fs.readFileSync(path.join(out, 'rank-0.json'), 'utf8'));
}

describe('sharding as accelerate (BatchSamplerShard, even_batches)', () => {
  const table: { n: number; batch_size: number; world: number; even_batches: boolean; drop_last: boolean; per_rank: { len: number; batches: number[][] }[] }[] =
    JSON.parse(fs.readFileSync(path.join(DDP, 'shard_table.json'), 'utf8'));
  it.each(table.filter((c) => c.even_batches).map((c) => [`N=${c.n} bs=${c.batch_size} W=${c.world}`, c] as const))('%s', (_n, c) => {
    const order = Array.from({ length: c.n }, (_, i) => i);
    c.per_rank.forEach((r, rank) => {
      expect(shard_batches(order, c.batch_size, c.world, rank, c.drop_last)).toEqual(r.batches);
      expect(dataloader_length(c.n, c.batch_size, c.world, c.drop_last)).toBe(r.len);
    });
  });

  it('drop_last keeps only whole rounds of full batches; one process batches plainly', () => {
    const order = Array.from({ length: 11 }, (_, i) => i);
    expect(shard_batches(order, 2, 2, 1, true)).toEqual([[2, 3], [6, 7]]);
    expect(dataloader_length(11, 2, 2, true)).toBe(2);
    expect(shard_batches(order, 4, 1, 0, false)).toEqual([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]);
  });

  it("the logged loss is torch's float32 mean over ranks", () => {
    expect(float32_mean([Math.fround(0.1), Math.fround(0.7)])).toBe(Math.fround(Math.fround(Math.fround(0.1) + Math.fround(0.7)) / 2));
  });
});

describe('against HF Trainer under torchrun (Gloo, 2 processes)', () => {
  const golden = (name: string) => ({
    run: JSON.parse(fs.readFileSync(path.join(DDP, `${name}.json`), 'utf8')),
    tensors: readSafetensors(path.join(DDP, `${name}.safetensors`)).tensors,
  });

  const errors = new ErrorLog(fidelity);
  afterAll(() => errors.print('torchrun runs vs HF Trainer under torchrun'));

  it.each(['ddp_noproj', 'ddp_proj_ga2', 'ddp_uneven', 'ddp_logrem'])(`%s: one thread per rank, exact mode: ${fidelity.label}`, async (name) => {
    const { run, tensors } = golden(name);
    const s = run.settings;
    const tol = trainerTolerance(name, 'ddp');
    const { use_cpu: _c, dataloader_num_workers: _w, ddp_backend, disable_tqdm: _t, ...passed } = s.training_args_passed;
    const { exits, results } = await runRanks(
      {
        exact: true,
        rows: s.rows_used,
        num_virtual_tokens: s.num_virtual_tokens,
        prefix_projection: s.prefix_projection,
        args: { ...passed, ddp_backend, output_dir: path.join(scratch, `${name}-out`) },
      },
      2,
      name,
    );
    expect(exits.map((e) => [e.code, e.stderr])).toEqual([[0, ''], [0, '']]);
    const ranks = results();
    for (const r of ranks) {
      const strip = (h: Record<string, number>[]) => h.map((e) => Object.fromEntries(Object.entries(e).filter(([k]) => !TIMING.has(k))));
      // Every rank's log_history is rank 0's in Python, except train_loss: each rank adds its own unlogged remainder.
      const ref = strip(run.log_history);
      ref[ref.length - 1].train_loss = run.train_output_per_rank[r.rank].training_loss;
      const ours = strip(r.log_history);
      if (fidelity.bitExact) {
        expect(ours).toEqual(ref);
        expect(r.output.training_loss).toBe(run.train_output_per_rank[r.rank].training_loss);
      } else {
        expect(ours.map((e) => Object.keys(e))).toEqual(ref.map((e) => Object.keys(e)));
        let lossErr = Math.abs(r.output.training_loss - run.train_output_per_rank[r.rank].training_loss);
        let gnErr = 0;
        ours.forEach((e, i) => {
          for (const [k, v] of Object.entries(ref[i])) {
            if (k === 'loss' || k === 'train_loss') lossErr = Math.max(lossErr, Math.abs(e[k] - v));
            else if (k === 'grad_norm') gnErr = Math.max(gnErr, Math.abs(e[k] - v) / Math.abs(v));
            else expect([i, k, e[k]]).toEqual([i, k, v]); // learning_rate, epoch, step, total_flos: exact
          }
        });
        errors.add(`${name} rank ${r.rank} logged loss (abs; bound ${tol.loss.toExponential(1)})`, lossErr);
        errors.add(`${name} rank ${r.rank} grad_norm (rel; bound ${tol.grad_norm.toExponential(1)})`, gnErr);
        expect(lossErr).toBeLessThanOrEqual(tol.loss);
        expect(gnErr).toBeLessThanOrEqual(tol.grad_norm);
      }
      expect(r.state.is_world_process_zero).toBe(r.rank === 0);
      for (const [n, v] of Object.entries(r.params)) {
        const err = maxRelErr(v, asNumbers(tensors.get(`param_final.${n}`)!));
        errors.add(`${name} rank ${r.rank} final ${n} (rel; bound ${tol.param.toExponential(1)})`, err);
        expect([n, err <= (fidelity.bitExact ? 0 : tol.param)]).toEqual([n, true]);
      }
    }
    expect(ranks[0].output.metrics.total_flos).toBe(run.train_output.metrics.total_flos);
    if (name === 'ddp_proj_ga2') {
      // Rank 0 alone wrote checkpoint-4, with HF's trainer_state.json (plus the world size, where Python ignores it).
      const ckpt = path.join(scratch, `${name}-out`, 'checkpoint-4');
      const ours = JSON.parse(fs.readFileSync(path.join(ckpt, 'trainer_state.json'), 'utf8'));
      const ref = JSON.parse(fs.readFileSync(path.join(DDP, 'ddp_checkpoint_trainer_state.json'), 'utf8'));
      expect(ours.stateful_callbacks.DataParallel).toEqual({ args: { world_size: 2 }, attributes: {} });
      const { stateful_callbacks: _a, log_history: oursLog, ...oursRest } = ours;
      const { stateful_callbacks: _b, log_history: refLog, ...refRest } = ref;
      expect(oursRest).toEqual(refRest);
      // Its log_history is the run's, compared above (bit for bit or within the tolerances).
      if (fidelity.bitExact) expect(oursLog).toEqual(refLog);
      else expect(oursLog.map((e: object) => Object.keys(e))).toEqual(refLog.map((e: object) => Object.keys(e)));
      expect(fs.readdirSync(path.join(scratch, `${name}-out`)).filter((f) => f.startsWith('.'))).toEqual([]);
    }
  });
});

describe('2 processes × batch 2 = 1 process × batch 4', () => {
  it('same logged losses (1e-5) and final prefix (1e-5 relative), fast mode', async () => {
    const args = { output_dir: path.join(scratch, 'eq-out'), save_strategy: 'no', learning_rate: 0.005, max_steps: 6, logging_steps: 1, gradient_accumulation_steps: 2, optim: 'adamw_torch' };
    const { exits, results } = await runRanks({ prefix_projection: true, args: { ...args, per_device_train_batch_size: 2 } }, 2, 'eq-ddp');
    expect(exits.map((e) => e.code)).toEqual([0, 0]);
    const single = await runSingle({ prefix_projection: true, args: { ...args, per_device_train_batch_size: 4 } }, 'eq-single');
    const [r0] = results();
    const losses = (h: Record<string, number>[]) => h.filter((e) => 'loss' in e).map((e) => e.loss);
    expect(losses(r0.log_history)).toHaveLength(6);
    losses(r0.log_history).forEach((l, i) => expect(Math.abs(l - losses(single.log_history)[i])).toBeLessThan(1e-5));
    for (const [n, v] of Object.entries(r0.params)) expect([n, maxRelErr(v, single.params[n]) < 1e-5]).toEqual([n, true]);
    expect(r0.log_history.map((e) => e.learning_rate)).toEqual(single.log_history.map((e) => e.learning_rate));
    expect(r0.log_history.map((e) => e.epoch)).toEqual(single.log_history.map((e) => e.epoch));
  });
});

describe('resume', () => {
  it('a 2-process run resumed from its checkpoint with 2 processes ends bit-identical', async () => {
    const base = { exact: true, args: { save_steps: 3, learning_rate: 0.005, max_steps: 6, logging_steps: 2, per_device_train_batch_size: 2, optim: 'adamw_torch' } };
    const full = await runRanks({ ...base, args: { ...base.args, output_dir: path.join(scratch, 'res-full') } }, 2, 'res-full');
    expect(full.exits.map((e) => e.code)).toEqual([0, 0]);
    // Python-loadable checkpoint with every rank's loss window.
    const rs = JSON.parse(fs.readFileSync(path.join(scratch, 'res-full', 'checkpoint-3', 'resume_state.json'), 'utf8'));
    expect(rs.world_size).toBe(2);
    expect(rs.ranks).toHaveLength(2);
    const out = path.join(scratch, 'res-part');
    fs.mkdirSync(out, { recursive: true });
    fs.cpSync(path.join(scratch, 'res-full', 'checkpoint-3'), path.join(out, 'checkpoint-3'), { recursive: true });
    const resumed = await runRanks({ ...base, resume: true, args: { ...base.args, output_dir: out } }, 2, 'res-resumed');
    expect(resumed.exits.map((e) => [e.code, e.stderr])).toEqual([[0, ''], [0, '']]);
    const a = full.results(), b = resumed.results();
    for (const r of [0, 1]) {
      expect(b[r].params).toEqual(a[r].params);
      const strip = (h: Record<string, number>[]) => h.filter((e) => 'loss' in e);
      expect(strip(b[r].log_history)).toEqual(strip(a[r].log_history));
      expect(b[r].output.training_loss).toBe(a[r].output.training_loss);
    }
  });
});

describe('faults', () => {
  it('a worker killed mid-run: the launcher stops the others and fails within 60 s', async () => {
    const out = path.join(scratch, 'kill');
    const t0 = Date.now();
    const lines: string[] = [];
    const result = await launch({
      nproc_per_node: 2,
      command: process.execPath,
      args: [WORKER],
      env: jobEnv({ exit_at_step: 2, exit_rank: 1, args: { output_dir: out, save_strategy: 'no', max_steps: 1000, per_device_train_batch_size: 1, learning_rate: 0.005 } }, out),
      log: (l) => lines.push(l),
      kill_grace: 5,
    });
    expect(Date.now() - t0).toBeLessThan(60_000);
    expect(result.exit_code).toBe(1);
    expect(result.failures[0]).toMatchObject({ rank: 1, signal: 'SIGKILL' });
    expect(lines.join('\n')).toMatch(/worker rank 1 .*was killed by SIGKILL: stopping the other workers/);
    expect(result.exits).toHaveLength(2);
  });

  it('a rank that dies makes the other fail with ERR_DISTRIBUTED (no launcher)', async () => {
    const { exits } = await runRanks({ exit_at_step: 2, exit_rank: 1, args: { output_dir: path.join(scratch, 'die'), save_strategy: 'no', max_steps: 1000, per_device_train_batch_size: 1 } }, 2, 'die');
    expect(exits[1].signal).toBe('SIGKILL');
    expect(exits[0].code).toBe(3);
    expect(exits[0].stderr).toMatch(/ERR_DISTRIBUTED rank 0\/2: .* failed: another process left the group/);
  });

  it('ranks that train different things are refused at start, on every rank', async () => {
    const { exits } = await runRanks({ args: { output_dir: path.join(scratch, 'mismatch'), save_strategy: 'no', max_steps: 2 } }, 2, 'mismatch', (rank) => ({ num_virtual_tokens: rank === 0 ? 4 : 6 }));
    for (const e of exits) {
      expect(e.code).toBe(3);
      expect(e.stderr).toMatch(/do not train the same thing.*prefix: rank 0 \[\["embedding.weight",\[4,128\]\]\], rank 1 \[\["embedding.weight",\[6,128\]\]\]/);
    }
  });

  it('a busy port and an unreachable master are clear errors', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const busy = (server.address() as net.AddressInfo).port;
    try {
      await expect(init_process_group({ rank: 0, world_size: 2, master_port: busy, timeout: 2 })).rejects.toMatchObject({
        code: 'ERR_DISTRIBUTED',
        message: expect.stringMatching(new RegExp(`rank 0/2 cannot host the rendezvous store on 127.0.0.1:${busy}: the port is already in use`)),
      });
    } finally {
      server.close();
    }
    const nobody = await free_port();
    const t0 = Date.now();
    const err = await init_process_group({ rank: 1, world_size: 2, master_port: nobody, timeout: 1.5 }).catch((e) => e);
    expect(err).toBeInstanceOf(PeftNodeError);
    expect(err.message).toMatch(new RegExp(`rank 1/2 cannot reach the rendezvous store at 127.0.0.1:${nobody} within 1.5 s`));
    expect(Date.now() - t0).toBeLessThan(30_000);
    await destroy_process_group();
  });

  it('a rank that finds no checkpoint to resume from fails with all the others, at start', async () => {
    const dirs = [path.join(scratch, 'nockpt-0'), path.join(scratch, 'nockpt-1')];
    const source = path.join(scratch, 'res-full', 'checkpoint-3'); // from the resume test above
    fs.cpSync(source, path.join(dirs[0], 'checkpoint-3'), { recursive: true });
    const args = (rank: number) => ({ output_dir: dirs[rank], save_strategy: 'no', max_steps: 6, per_device_train_batch_size: 2 });
    const { exits } = await runRanks({ resume: true, args: args(0) }, 2, 'nockpt', (rank) => ({ args: args(rank) }));
    for (const e of exits) {
      expect(e.code).toBe(3);
      expect(e.stderr).toMatch(/resume_from_checkpoint: rank 0 "checkpoint-3", rank 1 "none in .*nockpt-1"/);
    }
  });

  it('launcher arguments are checked', async () => {
    await expect(launch({ nproc_per_node: 0, command: process.execPath, args: [] })).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    await expect(launch({ nproc_per_node: 1, nnodes: 2, node_rank: 2, command: process.execPath, args: [] })).rejects.toMatchObject({ code: 'ERR_CONFIG' });
  });
});

/** Resolves once `cond()` holds (polled every 50 ms); rejects after `ms`. */
function until(cond: () => boolean, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const t = setInterval(() => {
      if (cond()) {
        clearInterval(t);
        resolve();
      } else if (Date.now() - t0 > ms) {
        clearInterval(t);
        reject(new Error('timed out waiting'));
      }
    }, 50);
  });
}

describe('peft-node train --nproc 2', () => {
  const cli = (args: string[], cwd: string, env: NodeJS.ProcessEnv = {}) => {
    const p = spawn(process.execPath, [CLI, ...args], { cwd, env: { ...process.env, PEFT_NODE_CACHE: path.join(scratch, 'cache'), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    p.stdout!.on('data', (d) => (stdout += d));
    return { p, done: exited(p).then((r) => ({ ...r, stdout })), stdout: () => stdout };
  };

  it('trains the demo and matches the single-process run with the doubled batch', async () => {
    const ddp = await cli(['train', '--nproc', '2', '--output', 'ddp'], scratch).done;
    expect(ddp.code).toBe(0);
    expect(ddp.stderr).toMatch(/launching 2 workers \(ranks 0-1 of 2; rendezvous at 127.0.0.1:\d+\)/);
    expect(ddp.stdout.match(/trainable params/g)).toHaveLength(1); // only rank 0 talks
    expect(ddp.stdout).toMatch(/batch 1 × 8 accumulated × 2 processes/);
    const single = await cli(['train', '--batch-size', '2', '--output', 'single'], scratch).done;
    expect(single.code).toBe(0);
    const state = (d: string) => JSON.parse(fs.readFileSync(path.join(scratch, d, 'checkpoint-20', 'trainer_state.json'), 'utf8'));
    const a = state('ddp').log_history.filter((e: Record<string, number>) => 'loss' in e);
    const b = state('single').log_history.filter((e: Record<string, number>) => 'loss' in e);
    expect(a).toHaveLength(5);
    a.forEach((e: Record<string, number>, i: number) => expect(Math.abs(e.loss - b[i].loss)).toBeLessThan(1e-5));
    const w = (d: string) => readSafetensors(path.join(scratch, d, 'adapter', 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!;
    expect(maxRelErr(asNumbers(w('ddp')), asNumbers(w('single')))).toBeLessThan(1e-5);
  });

  it('two "machines" (--nnodes 2, one launcher each, on loopback) train like --nproc 2', async () => {
    const port = String(await free_port());
    // One thread each: both "machines" share this one's two cores.
    const node = (rank: number) =>
      cli(['train', '--nnodes', '2', '--node-rank', String(rank), '--master-addr', '127.0.0.1', '--master-port', port, '--output', `nodes-${rank}`, '--epochs', '2'], scratch, { OMP_NUM_THREADS: '1' });
    const [a, b] = await Promise.all([node(0).done, node(1).done]);
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(a.stderr).toMatch(new RegExp(`launching 1 worker \\(ranks 0-0 of 2; rendezvous at 127.0.0.1:${port}\\)`));
    // Only rank 0 talks; each machine's first worker prints the log lines, as HF's PrinterCallback (local process zero).
    expect(b.stdout).not.toMatch(/trainable params|Model:|Trained/);
    expect(b.stdout).toMatch(/'loss'/);
    const ref = await cli(['train', '--nproc', '2', '--output', 'nodes-ref', '--epochs', '2'], scratch).done;
    const w = (d: string) => asNumbers(readSafetensors(path.join(scratch, d, 'adapter', 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!);
    expect(maxRelErr(w('nodes-0'), w('nodes-ref'))).toBe(0);
    expect(fs.existsSync(path.join(scratch, 'nodes-1', 'adapter'))).toBe(false);
  });

  it('workers exit when their launcher is killed outright', async () => {
    const run = cli(['train', '--nproc', '2', '--output', 'orphans', '--epochs', '1000', '--logging-steps', '1'], scratch);
    await until(() => /'loss'/.test(run.stdout()));
    const workers = () =>
      execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => l.includes('--output orphans') && !l.includes(String(run.p.pid)) && l.includes('peft-node.js'));
    expect(workers()).toHaveLength(2);
    run.p.kill('SIGKILL');
    await run.done;
    await until(() => workers().length === 0, 15_000);
    expect(workers()).toEqual([]);
  });

  it('Ctrl-C to the launcher stops every worker after the same step, with a checkpoint (exit 130)', async () => {
    const run = cli(['train', '--nproc', '2', '--output', 'sigint', '--epochs', '1000', '--logging-steps', '1'], scratch);
    await until(() => /'loss'/.test(run.stdout()));
    run.p.kill('SIGINT');
    const r = await run.done;
    expect(r.code).toBe(130);
    const step = Number(/Interrupted at step (\d+)/.exec(r.stdout)?.[1]);
    expect(step).toBeGreaterThan(0);
    expect(r.stdout).toMatch(/Continue with: peft-node train --nproc 2 --output sigint --epochs 1000 --logging-steps 1 --resume/);
    expect(fs.existsSync(path.join(scratch, 'sigint', `checkpoint-${step}`, 'trainer_state.json'))).toBe(true);
  });
});
