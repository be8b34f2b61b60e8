/**
 * A torchrun-like launcher (torch.distributed.run --nproc-per-node): starts one worker process per local rank with
 * the variables init_process_group reads (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
 * MASTER_PORT), forwards Ctrl-C / SIGTERM to them, and when one worker fails stops the others (SIGTERM, then SIGKILL
 * after a grace period) and reports which rank failed and how.
 *
 * Workers run in their own process groups so that a terminal's Ctrl-C reaches them once, through the launcher; an
 * IPC channel ties each to the launcher, so a launcher killed with SIGKILL takes its workers with it
 * (watch_launcher, called by every worker's CLI).
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as net from 'node:net';
import * as os from 'node:os';
import { PeftNodeError } from '../errors';

export interface LaunchOptions {
  /** Worker processes on this machine (torchrun --nproc-per-node). */
  nproc_per_node: number;
  /** Machines (default 1); each runs this launcher with its own node_rank. */
  nnodes?: number;
  node_rank?: number;
  /** Where rank 0 hosts the rendezvous store (default 127.0.0.1). */
  master_addr?: string;
  /** Default: a free port when nnodes is 1, else 29500 (torchrun's). */
  master_port?: number;
  /** The worker: an executable and its arguments (for the CLI: node, bin/peft-node.js, the command line). */
  command: string;
  args: string[];
  /** Base environment of the workers (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Seconds the surviving workers get to exit after SIGTERM before SIGKILL (default 10). */
  kill_grace?: number;
  /** Where launcher messages go (default stderr, "peft-node: " prefixed). */
  log?: (line: string) => void;
  /** Called with the rendezvous port just before the workers start. */
  on_start?: (master_port: number) => void;
}

export interface WorkerExit {
  rank: number;
  local_rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface LaunchResult {
  /** 0 when every worker succeeded; 130 when all stopped on Ctrl-C (checkpoints saved); else 1. */
  exit_code: number;
  /** Workers that failed first (the cause), before the launcher stopped the rest. */
  failures: WorkerExit[];
  exits: WorkerExit[];
  master_port: number;
}

/** Environment variable marking a process as a launched worker. */
export const LAUNCHED_WORKER_ENV = 'PEFT_NODE_LAUNCHED_WORKER';

/** A TCP port that was free a moment ago on `host` (torchrun --standalone does the same). */
export function free_port(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** "exited with code N" / "was killed by SIGNAL". */
export function describe_exit(e: Pick<WorkerExit, 'code' | 'signal'>): string {
  return e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code}`;
}

export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const nproc = options.nproc_per_node;
  const nnodes = options.nnodes ?? 1;
  const node_rank = options.node_rank ?? 0;
  const int = (v: number, min: number) => Number.isSafeInteger(v) && v >= min;
  if (!int(nproc, 1)) throw new PeftNodeError('ERR_CONFIG', `launch: nproc_per_node must be an integer >= 1, got ${nproc}`);
  if (!int(nnodes, 1)) throw new PeftNodeError('ERR_CONFIG', `launch: nnodes must be an integer >= 1, got ${nnodes}`);
  if (!int(node_rank, 0) || node_rank >= nnodes) throw new PeftNodeError('ERR_CONFIG', `launch: node_rank must be in [0, nnodes=${nnodes}), got ${node_rank}`);
  const master_addr = options.master_addr ?? '127.0.0.1';
  const master_port = options.master_port ?? (nnodes === 1 ? await free_port(master_addr) : 29500);
  if (!int(master_port, 1) || master_port > 65535) throw new PeftNodeError('ERR_CONFIG', `launch: master_port must be in [1, 65535], got ${master_port}`);
  const log = options.log ?? ((line: string) => process.stderr.write(`peft-node: ${line}\n`));
  const world = nnodes * nproc;
  const baseEnv = options.env ?? process.env;
  // torchrun sets OMP_NUM_THREADS=1; sharing the cores out keeps a lone machine as busy without oversubscribing it.
  const threads = baseEnv.OMP_NUM_THREADS ?? String(Math.max(1, Math.floor(os.availableParallelism() / nproc)));

  const children: { proc: ChildProcess; rank: number; local_rank: number; done: boolean }[] = [];
  const exits: WorkerExit[] = [];
  const failures: WorkerExit[] = [];
  let stopping = false;
  let interrupted = false;
  let killTimer: NodeJS.Timeout | undefined;

  const signalAll = (sig: NodeJS.Signals) => {
    for (const c of children) if (!c.done) c.proc.kill(sig);
  };
  const stopAll = () => {
    if (stopping) return;
    stopping = true;
    signalAll('SIGTERM');
    killTimer = setTimeout(() => signalAll('SIGKILL'), (options.kill_grace ?? 10) * 1000);
    killTimer.unref();
  };
  const onInterrupt = (sig: NodeJS.Signals) => {
    interrupted = true;
    signalAll(sig); // the workers stop after their current step and save a checkpoint; a second Ctrl-C quits them
  };
  const onSigint = () => onInterrupt('SIGINT');
  const onSigterm = () => onInterrupt('SIGTERM');
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);

  options.on_start?.(master_port);
  try {
    await new Promise<void>((resolve) => {
      let running = nproc;
      for (let local_rank = 0; local_rank < nproc; local_rank++) {
        const rank = node_rank * nproc + local_rank;
        const env: NodeJS.ProcessEnv = {
          ...baseEnv,
          RANK: String(rank),
          WORLD_SIZE: String(world),
          LOCAL_RANK: String(local_rank),
          LOCAL_WORLD_SIZE: String(nproc),
          GROUP_RANK: String(node_rank),
          MASTER_ADDR: master_addr,
          MASTER_PORT: String(master_port),
          OMP_NUM_THREADS: threads,
          [LAUNCHED_WORKER_ENV]: '1',
        };
        delete env.TORCHELASTIC_USE_AGENT_STORE; // rank 0 hosts the store here
        const proc = spawn(options.command, options.args, { env, stdio: ['inherit', 'inherit', 'inherit', 'ipc'], detached: true });
        const entry = { proc, rank, local_rank, done: false };
        children.push(entry);
        const finish = (code: number | null, signal: NodeJS.Signals | null) => {
          if (entry.done) return;
          entry.done = true;
          const e: WorkerExit = { rank, local_rank, code, signal };
          exits.push(e);
          const ok = code === 0 || (interrupted && code === 130);
          if (!ok && !stopping) {
            failures.push(e);
            log(`worker rank ${rank} (local rank ${local_rank}, pid ${proc.pid}) ${describe_exit(e)}: stopping the other workers`);
            stopAll();
          }
          if (--running === 0) resolve();
        };
        proc.once('exit', finish);
        proc.once('error', (err) => {
          log(`worker rank ${rank} could not start: ${err.message}`);
          finish(127, null);
        });
      }
    });
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
    if (killTimer) clearTimeout(killTimer);
  }
  const exit_code = failures.length ? 1 : exits.every((e) => e.code === 0) ? 0 : interrupted && exits.every((e) => e.code === 0 || e.code === 130) ? 130 : 1;
  return { exit_code, failures, exits, master_port };
}

/**
 * In a launched worker: exit when the launcher is gone (its IPC channel closed), even if it was killed outright, so
 * no worker is left training — or waiting for a peer — on its own. No-op in other processes. The CLI and
 * init_process_group call it.
 */
let watching = false;

export function watch_launcher(): void {
  if (watching || process.env[LAUNCHED_WORKER_ENV] !== '1' || !process.channel) return;
  watching = true;
  process.channel.unref(); // the channel must not keep a finished worker alive
  process.once('disconnect', () => {
    process.stderr.write(`peft-node: [rank ${process.env.RANK ?? '?'}] the launcher is gone: exiting\n`);
    process.exit(1);
  });
}
