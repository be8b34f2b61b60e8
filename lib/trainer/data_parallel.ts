/**
 * What HF Trainer + accelerate do differently under DistributedDataParallel, for the Trainer to follow: how the
 * seeded order is split between ranks (accelerate's BatchSamplerShard with even_batches), the per-rank dataloader
 * length, the float32 mean of the logged loss over ranks, a check that every rank trains the same thing, and the
 * Distribution hooks (SingleProcess, DataParallel) through which the Trainer's loop does all of it.
 * (Facts and their sources: test/fixtures/ddp/README.md, from real torchrun runs.)
 */
import { PeftNodeError } from '../errors';
import type { ProcessGroup } from '../distributed/process_group';
import type { Parameter } from '../nn/parameter';

/**
 * len(train_dataloader) on each rank: ceil(ceil(N/bs)/W), or with drop_last floor(floor(N/bs)/W) (only whole
 * rounds of W full batches).
 */
export function dataloader_length(n: number, bs: number, world: number, drop_last: boolean): number {
  return drop_last ? Math.floor(Math.floor(n / bs) / world) : Math.ceil(Math.ceil(n / bs) / world);
}

/**
 * The micro-batches (sample indices) of `rank` for one epoch of `order`: global batches rank, rank+W, rank+2W, … of
 * size bs. Without drop_last a short final round is completed as accelerate's even_batches does — the order is
 * extended to a multiple of bs·W by cycling its first min(N, bs·W) entries — so every rank gets as many full batches
 * (those samples are trained twice). With drop_last only whole rounds of full batches are used. W = 1 gives plain
 * batching (with a short last batch).
 */
export function shard_batches(order: number[], bs: number, world: number, rank: number, drop_last: boolean): number[][] {
  const n = order.length;
  let ext = order;
  if (world > 1 && !drop_last) {
    const total = Math.ceil(n / (bs * world)) * bs * world;
    const cycle = Math.min(n, bs * world);
    ext = order.slice();
    for (let i = n; i < total; i++) ext.push(order[(i - n) % cycle]);
  }
  const batches: number[][] = [];
  for (let i = 0; i + (drop_last ? bs : 1) <= ext.length; i += bs) batches.push(ext.slice(i, i + bs));
  if (world === 1) return batches;
  const rounds = dataloader_length(n, bs, world, drop_last);
  return Array.from({ length: rounds }, (_, k) => batches[k * world + rank]);
}

/** torch's float32 `.mean()` of a few float32 values gathered from the ranks (summed in rank order). */
export function float32_mean(values: number[]): number {
  let sum = 0;
  for (const v of values) sum = Math.fround(sum + v);
  return Math.fround(sum / values.length);
}

/**
 * Fails on every rank, naming the differences, unless all ranks describe the same training (model shape, prefix,
 * arguments, data size, checkpoint). Run before any other collective: mismatched ranks would otherwise exchange
 * tensors of different sizes, or wait for each other forever.
 */
export async function check_same_configuration(pg: ProcessGroup, fingerprint: Record<string, unknown>): Promise<void> {
  const all = (await pg.all_gather_object(fingerprint)) as Record<string, unknown>[];
  const differences: string[] = [];
  for (const key of Object.keys(fingerprint)) {
    const shown = all.map((f) => JSON.stringify(f?.[key]));
    if (shown.some((s) => s !== shown[0]))
      differences.push(`${key}: ${shown.map((s, r) => `rank ${r} ${s}`).join(', ')}`);
  }
  if (differences.length)
    throw new PeftNodeError(
      'ERR_DISTRIBUTED',
      `the ${pg.world_size} processes do not train the same thing (every rank must get the same model, prefix ` +
        `configuration, TrainingArguments and dataset): ${differences.join('; ')}`,
    );
}

/**
 * How this process takes part in training: alone, or as one rank of a data-parallel group, doing what HF Trainer +
 * accelerate do under DistributedDataParallel. The Trainer's loop calls these hooks at the points where the two
 * differ, so it reads the same for both.
 */
export interface Distribution {
  readonly rank: number;
  readonly world_size: number;
  readonly local_rank: number;
  /** The process that prints, saves checkpoints and writes the adapter (HF's is_world_process_zero). */
  readonly is_main_process: boolean;
  /** Fails on every rank unless all describe the same training (nothing to compare alone). */
  check_same_configuration(fingerprint: Record<string, unknown>): Promise<void>;
  /** DDP's start: rank 0's parameter values everywhere. */
  broadcast_parameters(parameters: Parameter[]): Promise<void>;
  /**
   * num_items_in_batch of an update: with average_tokens_across_devices the count summed over the ranks, and the loss
   * scale (W) that makes each rank's gradient a share of the global mean.
   */
  num_items_in_batch(count: number | undefined, average_tokens_across_devices: boolean): Promise<{ num_items: number | undefined; loss_scale: number }>;
  /** Before an optimizer step: the gradients averaged over the ranks; `flags` come back summed over them. */
  sync_gradients(parameters: Parameter[], flags: number[]): Promise<number[]>;
  /** The logged loss: the float32 mean of the ranks' running sums (HF's nested_gather(tr_loss).mean()). */
  mean_loss(tr_loss: number): Promise<number>;
  /** Sums of each value over the ranks, in order. */
  sum(values: number[]): Promise<number[]>;
  /** Every rank's values, [rank][i]. */
  gather(values: number[]): Promise<number[][]>;
}

/** A single process: every hook is the identity. */
export class SingleProcess implements Distribution {
  readonly rank = 0;
  readonly world_size = 1;
  readonly local_rank = 0;
  readonly is_main_process = true;
  async check_same_configuration(): Promise<void> {}
  async broadcast_parameters(): Promise<void> {}
  async num_items_in_batch(count: number | undefined): Promise<{ num_items: number | undefined; loss_scale: number }> {
    return { num_items: count, loss_scale: 1 };
  }
  async sync_gradients(_parameters: Parameter[], flags: number[]): Promise<number[]> {
    return flags;
  }
  async mean_loss(tr_loss: number): Promise<number> {
    return tr_loss;
  }
  async sum(values: number[]): Promise<number[]> {
    return values;
  }
  async gather(values: number[]): Promise<number[][]> {
    return [values];
  }
}

/** One rank of a c10d group, as accelerate + DDP train (semantics: test/fixtures/ddp/README.md). */
export class DataParallel implements Distribution {
  readonly rank: number;
  readonly world_size: number;
  readonly local_rank: number;
  readonly is_main_process: boolean;

  constructor(readonly group: ProcessGroup) {
    this.rank = group.rank;
    this.world_size = group.world_size;
    this.local_rank = group.local_rank;
    this.is_main_process = group.rank === 0;
  }

  check_same_configuration(fingerprint: Record<string, unknown>): Promise<void> {
    return check_same_configuration(this.group, fingerprint);
  }

  broadcast_parameters(parameters: Parameter[]): Promise<void> {
    return this.group.broadcast_parameters(parameters);
  }

  async num_items_in_batch(count: number | undefined, average_tokens_across_devices: boolean): Promise<{ num_items: number | undefined; loss_scale: number }> {
    if (!average_tokens_across_devices) return { num_items: count, loss_scale: 1 };
    const counts = (await this.group.all_gather([count ?? -1])).map(([c]) => c);
    const num_items = counts.every((c) => c >= 0) ? counts.reduce((s, c) => s + c, 0) : undefined;
    return { num_items, loss_scale: num_items !== undefined ? this.world_size : 1 };
  }

  sync_gradients(parameters: Parameter[], flags: number[]): Promise<number[]> {
    return this.group.average_gradients(parameters, flags);
  }

  async mean_loss(tr_loss: number): Promise<number> {
    return float32_mean((await this.group.all_gather([tr_loss])).map(([v]) => v));
  }

  async sum(values: number[]): Promise<number[]> {
    return (await this.group.all_gather(values)).reduce((acc, row) => acc.map((s, i) => s + row[i]), values.map(() => 0));
  }

  gather(values: number[]): Promise<number[][]> {
    return this.group.all_gather(values);
  }
}
