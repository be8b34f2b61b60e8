/**
 * What HF Trainer + accelerate do differently under DistributedDataParallel, for the Trainer to follow: how the
 * seeded order is split between ranks (accelerate's BatchSamplerShard with even_batches), the per-rank dataloader
 * length, the float32 mean of the logged loss over ranks, and a check that every rank trains the same thing.
 * (Facts and their sources: test/fixtures/ddp/README.md, from real torchrun runs.)
 */
import { PeftNodeError } from '../errors';
import type { ProcessGroup } from '../distributed/process_group';

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
