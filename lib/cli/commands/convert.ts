/**
 * `peft-node convert DIR`: rewrites a model directory's pytorch_model.bin (single or sharded) as model.safetensors
 * (sharded above --max-shard-size, as transformers' save_pretrained), without Python and without running the
 * checkpoint's pickle. In place by default: model.safetensors lands next to pytorch_model.bin and loads first.
 */
import type { Argv } from 'yargs';
import { DEFAULT_MAX_SHARD_SIZE, convert_checkpoint, parse_size } from '../../models/convert';
import { Args, UsageError, format_bytes, note, out, require_dir, string_flag } from '../common';

export const command = 'convert <dir>';
export const describe = 'Convert a model directory\'s pytorch_model.bin (single or sharded) to model.safetensors, without Python';

export function builder(y: Argv): Argv {
  return y
    .positional('dir', { type: 'string', describe: 'model directory holding pytorch_model.bin or pytorch_model.bin.index.json' })
    .option('out', {
      type: 'string',
      describe: 'output directory (default: DIR itself); config.json, tokenizer and other small files are copied there',
    })
    .option('max-shard-size', {
      type: 'string',
      describe: 'largest safetensors file, e.g. 5GB, 500MB, 2GiB (larger weights are split into shards + index)',
      default: DEFAULT_MAX_SHARD_SIZE,
    })
    .example('$0 convert ./bloom-1b4-zh', 'adds model.safetensors next to pytorch_model.bin')
    .example('$0 convert ./bloom-1b4-zh --out ./bloom-1b4-zh-st --max-shard-size 2GB', 'a new directory, 2 GB shards');
}

export async function handler(args: Args): Promise<number> {
  const dir = string_flag(args, 'dir');
  if (dir === undefined) throw new UsageError('a model directory is needed: peft-node convert DIR');
  require_dir(dir, 'model directory');
  const outDir = string_flag(args, 'out') ?? dir;
  const sizeFlag = string_flag(args, 'max-shard-size') ?? DEFAULT_MAX_SHARD_SIZE;
  let maxShardSize: number;
  try {
    maxShardSize = parse_size(sizeFlag);
  } catch {
    throw new UsageError(`--max-shard-size must be a size such as 5GB, 500MB or 2GiB, got ${JSON.stringify(sizeFlag)}`);
  }
  const t0 = performance.now();
  const r = await convert_checkpoint(dir, outDir, { max_shard_size: maxShardSize });
  if (r.weights.length === 0) {
    note(`${dir} already holds ${r.source_format} weights: nothing to convert`);
    return 0;
  }
  const secs = (performance.now() - t0) / 1000;
  for (const [name, kept] of r.dropped) note(`'${name}' is '${kept}' (tied weights): written once, as '${kept}'`);
  out(`converted ${r.source_format} -> ${r.weights.join(', ')} in ${r.out}`);
  out(`  ${r.tensors} tensors, ${format_bytes(r.total_size)} in ${secs.toFixed(1)} s` +
      (r.copied.length ? `; copied ${r.copied.join(', ')}` : ''));
  return 0;
}
