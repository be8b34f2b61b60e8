/**
 * convert_checkpoint: a model directory's weights — pytorch_model.bin, single or sharded (read natively, without
 * Python and without running its pickle), or safetensors — rewritten as model.safetensors, split above
 * `max_shard_size` into model-0000k-of-0000n.safetensors + model.safetensors.index.json exactly as transformers'
 * save_pretrained splits and names them, next to copies of config.json, the tokenizer files and the directory's other
 * small files. Tensors stream from the mapped checkpoint to disk, so memory never holds a second copy of the model.
 * Nothing half-written is ever visible: files are written in a temporary sibling directory and renamed into place.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeftNodeError, nativeCall, rethrowNative } from '../errors';
import { native } from '../runtime/native';
import { pythonJsonDumps } from '../utils/python_json';
import { SafetensorsHeaderEntry, safetensorsHeader } from '../utils/safetensors';

/** transformers 4's default: each file stays under the Hub's recommended 5 GB (transformers 5 writes up to 50GB). */
export const DEFAULT_MAX_SHARD_SIZE = '5GB';
const SAFE_WEIGHTS = 'model.safetensors';
const SAFE_INDEX = 'model.safetensors.index.json';
const SHARD = /^model-\d{5}-of-\d{5}\.safetensors$/;
/** Weights in any framework's format, and their indexes: never copied (the output holds its own weights). */
const WEIGHT_FILE = /\.(bin|safetensors|h5|msgpack|pt|pth|ckpt|gguf|onnx)(\.index\.json)?$/;
/** Bytes handed to one write: large enough to stream at disk speed, small enough to bound the Buffer. */
const CHUNK = 64 * 1024 * 1024;

export interface ConvertOptions {
  /** Largest shard: bytes, or "5GB" / "500MB" (powers of 10, as transformers) / "2GiB". Default "5GB". */
  max_shard_size?: number | string;
}

export interface ConvertResult {
  /** What was read: "pytorch_model.bin", "pytorch_model.bin (sharded)", "safetensors", "safetensors (sharded)". */
  source_format: string;
  out: string;
  /** Weight files written (empty when `dir` already held safetensors and `out` is `dir`). */
  weights: string[];
  /** Other files copied from `dir` (config.json, tokenizer files, ...). */
  copied: string[];
  tensors: number;
  /** Bytes of tensor data written. */
  total_size: number;
  /** [name, kept name]: tensors sharing memory with an earlier one (tied weights), written once as save_pretrained does. */
  dropped: [string, string][];
}

/** huggingface_hub's parse_size_to_int ("5GB" = 5e9), plus binary units and plain byte counts. */
export function parse_size(size: number | string): number {
  if (typeof size === 'number') {
    if (Number.isSafeInteger(size) && size > 0) return size;
  } else {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$/i.exec(size);
    if (m) {
      const unit = (m[2] ?? 'B').toUpperCase();
      const scale = unit === 'B' ? 1 : unit.endsWith('IB') ? 1024 ** ('KMGT'.indexOf(unit[0]) + 1) : 1000 ** ('KMGT'.indexOf(unit[0]) + 1);
      const bytes = Math.floor(Number(m[1]) * scale);
      if (bytes > 0) return bytes;
    }
  }
  throw new PeftNodeError('ERR_INVALID_INPUT', `invalid size ${JSON.stringify(size)}: expected a positive byte count or e.g. "5GB", "500MB", "2GiB"`);
}

/**
 * huggingface_hub's split_torch_state_dict_into_shards, in state-dict order: a tensor joins the current shard unless
 * that would exceed the limit; a tensor larger than the limit gets a shard of its own.
 */
export function plan_shards(sizes: number[], max_shard_size: number): number[][] {
  const shards: number[][] = [];
  let current: number[] = [];
  let currentSize = 0;
  sizes.forEach((size, i) => {
    if (size > max_shard_size) {
      shards.push([i]);
      return;
    }
    if (currentSize + size > max_shard_size) {
      shards.push(current);
      current = [];
      currentSize = 0;
    }
    current.push(i);
    currentSize += size;
  });
  if (current.length > 0) shards.push(current);
  return shards;
}

/**
 * transformers' remove_tied_weights_from_state_dict for BLOOM: with tie_word_embeddings (the default) lm_head.weight
 * is the embedding and is not saved. In one .bin they share memory (found natively); across .bin shards each holds a
 * copy, so the name decides, as in transformers. Returns [lm_head entry, embedding name].
 */
function tiedLmHead(dir: string, entries: [string, string, number[], number, number][]): [number, string] | null {
  let tie = true;
  try {
    tie = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).tie_word_embeddings !== false;
  } catch {
    return null; // no (readable) config: only memory sharing identifies tied weights
  }
  const head = entries.findIndex(([n]) => n === 'lm_head.weight');
  const emb = entries.find(([n]) => n === 'transformer.word_embeddings.weight' || n === 'word_embeddings.weight');
  if (!tie || head < 0 || !emb) return null;
  return emb[1] === entries[head][1] && emb[2].join() === entries[head][2].join() ? [head, emb[0]] : null;
}

/** A synchronous native call, its failure as a PeftNodeError. */
function sync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    rethrowNative(err);
  }
}

/** write(2) may write less than asked (signals, huge buffers): loop until all of `buf` is written. */
async function writeAll(fh: fs.promises.FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length; ) off += (await fh.write(buf, off, buf.length - off)).bytesWritten;
}

function samePath(a: string, b: string): boolean {
  const real = (p: string) => (fs.existsSync(p) ? fs.realpathSync(p) : path.resolve(p));
  return real(a) === real(b);
}

/**
 * Converts `dir`'s weights to safetensors in `out` (default: `dir` itself, where model.safetensors then sits next to
 * pytorch_model.bin and loads first). An existing `out` keeps its other files; its stale model.safetensors / shards
 * / index are replaced. Errors: the checkpoint's (ERR_FILE_NOT_FOUND naming the files looked for, ERR_ZIP, ERR_PICKLE,
 * ERR_UNSAFE_PICKLE, ERR_CHECKPOINT_FORMAT, ...), ERR_INVALID_INPUT for a bad size or an `out` that is a file, ERR_IO.
 */
export async function convert_checkpoint(dir: string, out: string = dir, options: ConvertOptions = {}): Promise<ConvertResult> {
  const maxShardSize = parse_size(options.max_shard_size ?? DEFAULT_MAX_SHARD_SIZE);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
    throw new PeftNodeError('ERR_FILE_NOT_FOUND', `model directory not found: ${dir}`);
  if (fs.existsSync(out) && !fs.statSync(out).isDirectory())
    throw new PeftNodeError('ERR_INVALID_INPUT', `output ${out} exists and is not a directory`);
  const inPlace = samePath(dir, out);

  const ckpt = await nativeCall(() => native().Checkpoint.open(dir));
  try {
    const source_format = ckpt.format();
    const entries = sync(() => ckpt.entries());
    const result: ConvertResult = { source_format, out, weights: [], copied: [], tensors: 0, total_size: 0, dropped: [] };
    if (inPlace && source_format.startsWith('safetensors')) return result; // already what convert would write

    const drop = new Map<number, string>(); // entry -> the name it duplicates
    entries.forEach(([, , , , alias], i) => alias >= 0 && drop.set(i, entries[alias][0]));
    const tied = tiedLmHead(dir, entries);
    if (tied && !drop.has(tied[0])) drop.set(tied[0], tied[1]);
    const kept = entries.map((_, i) => i).filter((i) => !drop.has(i));
    for (const [i, keptName] of drop) result.dropped.push([entries[i][0], keptName]);
    const shards = plan_shards(kept.map((i) => entries[i][3]), maxShardSize).map((s) => s.map((k) => kept[k]));
    if (shards.length === 0) shards.push([]); // an empty state dict still gets its (empty) model.safetensors
    const fileName = (k: number) =>
      shards.length === 1 ? SAFE_WEIGHTS : `model-${String(k + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;

    // A new `out` is built as a sibling and renamed; an existing one gets the temporary directory inside it (same
    // filesystem, and only `out` needs to be writable, e.g. converting a model in place).
    const exists = fs.existsSync(out);
    const tmpName = `.${path.basename(path.resolve(out))}.convert-${process.pid}-${Date.now()}`;
    const tmp = exists ? path.join(out, tmpName) : path.join(path.dirname(path.resolve(out)), tmpName);
    try {
      fs.mkdirSync(tmp, { recursive: true });
      const weightMap: Record<string, string> = {};
      let totalParameters = 0;
      for (let k = 0; k < shards.length; k++) {
        const header: SafetensorsHeaderEntry[] = shards[k].map((i) => {
          const [name, dtype, shape, byteLength] = entries[i];
          weightMap[name] = fileName(k);
          totalParameters += shape.reduce((a, b) => a * b, 1);
          result.total_size += byteLength;
          return { name, dtype, shape, byteLength };
        });
        const fh = await fs.promises.open(path.join(tmp, fileName(k)), 'w');
        try {
          await writeAll(fh, safetensorsHeader(header, { format: 'pt' }));
          for (const i of shards[k])
            for (let off = 0; off < entries[i][3]; off += CHUNK)
              await writeAll(fh, sync(() => ckpt.data(i, off, Math.min(CHUNK, entries[i][3] - off))));
          await fh.sync();
        } finally {
          await fh.close();
        }
        result.weights.push(fileName(k));
      }
      result.tensors = kept.length;
      if (shards.length > 1) {
        // save_pretrained's index: json.dumps(index, indent=2, sort_keys=True) + "\n".
        const index = { metadata: { total_parameters: totalParameters, total_size: result.total_size }, weight_map: weightMap };
        fs.writeFileSync(path.join(tmp, SAFE_INDEX), pythonJsonDumps(index, { indent: 2, sort_keys: true }) + '\n');
        result.weights.push(SAFE_INDEX);
      }
      if (!inPlace) {
        for (const f of fs.readdirSync(dir).sort()) {
          const from = path.join(dir, f);
          if (f.startsWith('.') || WEIGHT_FILE.test(f) || !fs.statSync(from).isFile()) continue;
          fs.copyFileSync(from, path.join(tmp, f));
          result.copied.push(f);
        }
      }
      publish(tmp, out, exists, result.weights, result.copied);
    } catch (err) {
      if (err instanceof PeftNodeError) throw err;
      throw new PeftNodeError('ERR_IO', `cannot write ${out}: ${(err as Error).message}`, { cause: err });
    } finally {
      try {
        fs.rmSync(tmp, { recursive: true, force: true });
      } catch {
        /* never created (e.g. ENOTDIR): nothing to clean */
      }
    }
    return result;
  } finally {
    ckpt.dispose();
  }
}

/**
 * Moves the written files into `out`. A new `out` is the temporary directory renamed (atomic). Into an existing one,
 * each file is renamed in and the index comes last, so until it lands a reader finds the previous weights (in place:
 * pytorch_model.bin); stale safetensors weights that would shadow or contradict the new ones are removed.
 */
function publish(tmp: string, out: string, outExisted: boolean, weights: string[], copied: string[]): void {
  if (!outExisted) {
    fs.renameSync(tmp, out);
    return;
  }
  const move = (f: string) => fs.renameSync(path.join(tmp, f), path.join(out, f));
  const remove = (f: string) => fs.rmSync(path.join(out, f), { force: true });
  copied.forEach(move);
  const sharded = weights.includes(SAFE_INDEX);
  weights.filter((f) => f !== SAFE_INDEX).forEach(move);
  if (sharded) {
    remove(SAFE_WEIGHTS); // it would load before the index
    move(SAFE_INDEX);
  } else {
    remove(SAFE_INDEX);
  }
  for (const f of fs.readdirSync(out)) if (SHARD.test(f) && !weights.includes(f)) remove(f);
}
