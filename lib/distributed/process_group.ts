/**
 * torch.distributed for peft-node: the default process group, joined from torchrun's environment (RANK, WORLD_SIZE,
 * LOCAL_RANK, MASTER_ADDR, MASTER_PORT) over libtorch's c10d (TCPStore rendezvous, Gloo). The Trainer joins it by
 * itself when WORLD_SIZE > 1, as HF's TrainingArguments does; scripts can call init_process_group directly.
 */
import '../runtime/dispose_polyfill';
import { PeftNodeError, nativeCall } from '../errors';
import { Parameter, native_refs } from '../nn/parameter';
import { native, NativeProcessGroup } from '../runtime/native';
import { SerialQueue } from '../runtime/serial_queue';
import { watch_launcher } from './launch';

/** What a launcher (peft-node train --nproc, torchrun) tells each worker. */
export interface DistributedEnv {
  rank: number;
  world_size: number;
  local_rank: number;
  local_world_size: number;
  master_addr: string;
  master_port: number;
  /** torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE=True): rank 0 only connects to it. */
  agent_store: boolean;
}

export interface InitProcessGroupOptions {
  /** "gloo" (the default, CPU and CUDA tensors). */
  backend?: string | null;
  /** Seconds the rendezvous and each collective may wait for the other ranks (HF's ddp_timeout: 1800). */
  timeout?: number;
  /** Defaults: read from the environment (distributed_env). */
  rank?: number;
  world_size?: number;
  master_addr?: string;
  master_port?: number;
}

function envInt(env: NodeJS.ProcessEnv, name: string, min: number, fallback?: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') {
    if (fallback !== undefined) return fallback;
    throw new PeftNodeError('ERR_CONFIG', `distributed training: ${name} is not set (a launcher such as \`peft-node train --nproc N\` or torchrun sets it)`);
  }
  const v = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(v) || v < min)
    throw new PeftNodeError('ERR_CONFIG', `distributed training: ${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return v;
}

/**
 * The launcher's variables, or null when this process was not launched for data-parallel training (no WORLD_SIZE,
 * or WORLD_SIZE=1). Inconsistent values are ERR_CONFIG naming the variable.
 */
export function distributed_env(env: NodeJS.ProcessEnv = process.env): DistributedEnv | null {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '') return null;
  const world_size = envInt(env, 'WORLD_SIZE', 1);
  if (world_size === 1) return null;
  const rank = envInt(env, 'RANK', 0);
  if (rank >= world_size) throw new PeftNodeError('ERR_CONFIG', `distributed training: RANK=${rank} is not below WORLD_SIZE=${world_size}`);
  const local_world_size = envInt(env, 'LOCAL_WORLD_SIZE', 1, world_size);
  const local_rank = envInt(env, 'LOCAL_RANK', 0, rank % local_world_size);
  const master_addr = env.MASTER_ADDR || '127.0.0.1';
  const master_port = envInt(env, 'MASTER_PORT', 1, 29500);
  if (master_port > 65535) throw new PeftNodeError('ERR_CONFIG', `distributed training: MASTER_PORT must be in [1, 65535], got ${master_port}`);
  return { rank, world_size, local_rank, local_world_size, master_addr, master_port, agent_store: env.TORCHELASTIC_USE_AGENT_STORE === 'True' };
}

/** A c10d process group: the collectives data-parallel prefix training needs. */
export class ProcessGroup {
  /** @internal */
  readonly handle: NativeProcessGroup;
  readonly rank: number;
  readonly world_size: number;
  readonly local_rank: number;
  private readonly queue = new SerialQueue();
  private disposed = false;

  /** @internal */
  constructor(handle: NativeProcessGroup, local_rank: number) {
    this.handle = handle;
    this.rank = handle.rank();
    this.world_size = handle.worldSize();
    this.local_rank = local_rank;
  }

  private run<T>(task: () => Promise<T>): Promise<T> {
    if (this.disposed) return Promise.reject(new PeftNodeError('ERR_DISPOSED', 'this process group was destroyed'));
    return this.queue.run(() => nativeCall(task));
  }

  /**
   * DDP's gradient sync: the parameters' grads become their mean over the ranks (one bucket, in list order, which
   * must be the same on every rank). `counters` (small integers, e.g. flags) travel in the same all-reduce and
   * resolve summed over the ranks: one round trip per step.
   */
  async average_gradients(parameters: Iterable<Parameter>, counters: number[] = []): Promise<number[]> {
    for (const c of counters)
      if (!(Number.isInteger(c) && Math.abs(c) <= 2 ** 24))
        throw new PeftNodeError('ERR_INVALID_INPUT', `average_gradients: counters must be integers within ±2^24 (exact in float32), got ${c}`);
    const refs = await native_refs(parameters, 'average_gradients');
    const sums = await this.run(() => this.handle.averageGradients(refs, Float64Array.from(counters)));
    return Array.from(sums);
  }

  /** DDP's start: rank 0's parameter values everywhere. */
  async broadcast_parameters(parameters: Iterable<Parameter>): Promise<void> {
    const refs = await native_refs(parameters, 'broadcast_parameters');
    await this.run(() => this.handle.broadcastParameters(refs));
  }

  /** Every rank's `values` (exact: float64), indexed [rank][i]. Each rank must pass as many values. */
  async all_gather(values: number[]): Promise<number[][]> {
    const flat = await this.run(() => this.handle.allGather(Float64Array.from(values)));
    const n = values.length;
    return Array.from({ length: this.world_size }, (_, r) => Array.from(flat.subarray(r * n, (r + 1) * n)));
  }

  /** Every rank's string, in rank order. */
  all_gather_object(value: unknown): Promise<unknown[]> {
    return this.run(() => this.handle.allGatherString(JSON.stringify(value) ?? 'null')).then((all) => all.map((s) => JSON.parse(s)));
  }

  barrier(): Promise<void> {
    return this.run(() => this.handle.barrier());
  }

  /** Leaves the group (torch's destroy_process_group). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    const done = this.queue.run(() => nativeCall(() => this.handle.dispose()));
    this.disposed = true;
    await done;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

let defaultGroup: ProcessGroup | undefined;
let joining: Promise<ProcessGroup> | undefined;

/**
 * Joins the default process group (torch.distributed.init_process_group with init_method "env://"): rank 0 hosts the
 * rendezvous store at MASTER_ADDR:MASTER_PORT (unless torchrun's agent does) and every rank connects to it. Resolves
 * once all WORLD_SIZE ranks have joined; ERR_DISTRIBUTED when that fails within `timeout` seconds.
 */
export function init_process_group(options: InitProcessGroupOptions = {}): Promise<ProcessGroup> {
  if (defaultGroup || joining) throw new PeftNodeError('ERR_DISTRIBUTED', 'the default process group is already initialized (destroy_process_group() first)');
  const env = distributed_env();
  const world_size = options.world_size ?? env?.world_size ?? 1;
  const rank = options.rank ?? env?.rank ?? 0;
  const timeout = options.timeout ?? 1800;
  if (!(typeof timeout === 'number' && timeout > 0 && Number.isFinite(timeout)))
    throw new PeftNodeError('ERR_CONFIG', `init_process_group: timeout must be a positive number of seconds, got ${timeout}`);
  const backend = options.backend ?? 'gloo';
  watch_launcher(); // a worker of launch() exits with its launcher
  const master_addr = options.master_addr ?? env?.master_addr ?? '127.0.0.1';
  const master_port = options.master_port ?? env?.master_port ?? 29500;
  // Joining waits for every rank (up to `timeout`, 30 minutes by default): say what it waits for.
  const slow = setTimeout(
    () =>
      process.emitWarning(
        `rank ${rank} is waiting for all ${world_size} processes to join at ${master_addr}:${master_port} (WORLD_SIZE=${world_size}; gives up after ${timeout} s)`,
        'PeftNodeWarning',
      ),
    10_000,
  );
  slow.unref();
  joining = nativeCall(() =>
    native().ProcessGroup.create({
      rank,
      worldSize: world_size,
      masterAddr: master_addr,
      masterPort: master_port,
      hostStore: rank === 0 && !env?.agent_store,
      timeoutMs: Math.max(1, Math.round(timeout * 1000)),
      backend,
    }),
  ).finally(() => clearTimeout(slow)).then(
    (handle) => {
      defaultGroup = new ProcessGroup(handle, env?.local_rank ?? rank);
      joining = undefined;
      return defaultGroup;
    },
    (err) => {
      joining = undefined;
      throw err;
    },
  );
  return joining;
}

export function is_initialized(): boolean {
  return defaultGroup !== undefined;
}

/** The default group, or undefined before init_process_group. */
export function default_process_group(): ProcessGroup | undefined {
  return defaultGroup;
}

export function get_rank(): number {
  return defaultGroup?.rank ?? 0;
}

export function get_world_size(): number {
  return defaultGroup?.world_size ?? 1;
}

export async function destroy_process_group(): Promise<void> {
  const g = defaultGroup;
  defaultGroup = undefined;
  await g?.dispose();
}
