/**
 * pytorch_model.bin (torch.save's zip format) read natively by a restricted unpickler: fixtures from
 * scripts/gen_fixtures_bin.py. Good checkpoints (OrderedDict and plain dict, f32/f16, zip64, sharded, every dtype,
 * protocol 2 and 4) give exactly the safetensors fixture's logits; malformed and malicious ones are named errors, the
 * process lives on and no payload runs; a bin-only model directory trains; `convert` writes safetensors (sharded as
 * save_pretrained) that load with identical logits.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import {
  AutoModelForCausalLM,
  AutoTokenizer,
  DataCollatorForSeq2Seq,
  PeftNodeError,
  PrefixTuningConfig,
  Trainer,
  TrainingArguments,
  convert_checkpoint,
  get_peft_model,
  set_seed,
} from '../lib';
import { handler as convertCommand } from '../lib/cli/commands/convert';
import { UsageError } from '../lib/cli/common';
import { plan_shards, parse_size } from '../lib/models/convert';
import { native } from '../lib/runtime/native';
import { FIXTURES, TINY, asNumbers, countDiffering, tmpDir } from './helpers';

const BIN = path.join(FIXTURES, 'bin');
const TINY_F16 = path.join(FIXTURES, 'tiny-bloom-f16');
const IDS = [[1, 17, 250, 3, 999, 42, 7], [3, 3, 5, 6, 7, 8, 9]];
const MARKERS = ['os-system', 'eval', 'getattr', 'stack-global', 'inst', 'nested'].map((n) => `/tmp/peft-node-evil-${n}`);
const LOADING_CODES = ['ERR_ZIP', 'ERR_PICKLE', 'ERR_UNSAFE_PICKLE', 'ERR_CHECKPOINT_FORMAT'];

let scratch: string;
beforeAll(() => {
  scratch = tmpDir('peft-node-bin-');
});
afterAll(() => {
  fs.rmSync(scratch, { recursive: true, force: true });
});

async function logits(dir: string, dtype = 'auto'): Promise<{ values: Float64Array; dtype: string }> {
  const m = await AutoModelForCausalLM.from_pretrained(dir, { dtype });
  try {
    return { values: asNumbers((await m.forward({ input_ids: IDS })).logits!), dtype: m.dtype };
  } finally {
    await m.dispose();
  }
}

async function expectSameLogits(dir: string, reference: string, dtype = 'auto'): Promise<void> {
  const [got, want] = [await logits(dir, dtype), await logits(reference, dtype)];
  expect(got.dtype).toBe(want.dtype);
  expect(got.values.length).toBe(want.values.length);
  expect(countDiffering(got.values, want.values)).toBe(0);
}

async function failure(p: Promise<unknown>): Promise<PeftNodeError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(PeftNodeError);
  return err as PeftNodeError;
}

/** name -> {dtype, shape, bytes} of a safetensors file, read raw (every dtype, no conversion). */
function rawSafetensors(file: string): Map<string, { dtype: string; shape: number[]; bytes: Buffer }> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  expect(n % 8).toBe(0);
  const out = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
  let expectedBegin = 0;
  for (const [name, v] of Object.entries(JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>)) {
    if (name === '__metadata__') continue;
    const [b, e] = v.data_offsets;
    expect(b).toBe(expectedBegin); // consecutive, no gaps: what the safetensors package requires
    expectedBegin = e;
    out.set(name, { dtype: v.dtype, shape: v.shape, bytes: buf.subarray(8 + n + b, 8 + n + e) });
  }
  expect(8 + n + expectedBegin).toBe(buf.length);
  return out;
}

/** The central directory of a zip (torch.save's: zip64 end records), enough to patch entries in tests. */
function zipEntries(buf: Buffer): { name: string; central: number; local: number; data: number; size: number }[] {
  const end = buf.lastIndexOf(Buffer.from('PK\x05\x06', 'latin1'));
  let count = buf.readUInt16LE(end + 10);
  let cd = buf.readUInt32LE(end + 16);
  if (buf.readUInt32LE(end - 20) === 0x07064b50) {
    const z64 = Number(buf.readBigUInt64LE(end - 20 + 8));
    count = Number(buf.readBigUInt64LE(z64 + 32));
    cd = Number(buf.readBigUInt64LE(z64 + 48));
  }
  const out = [];
  for (let i = 0, p = cd; i < count; i++) {
    const nameLen = buf.readUInt16LE(p + 28), extraLen = buf.readUInt16LE(p + 30), commentLen = buf.readUInt16LE(p + 32);
    const name = buf.subarray(p + 46, p + 46 + nameLen).toString('utf8');
    const local = buf.readUInt32LE(p + 42);
    const data = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    out.push({ name, central: p, local, data, size: buf.readUInt32LE(p + 24) });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}

/** A model dir in scratch with the tiny config and `bytes` as pytorch_model.bin. */
function binDir(name: string, bytes: Buffer | string): string {
  const d = path.join(scratch, name);
  fs.mkdirSync(d, { recursive: true });
  fs.copyFileSync(path.join(TINY, 'config.json'), path.join(d, 'config.json'));
  fs.writeFileSync(path.join(d, 'pytorch_model.bin'), bytes);
  return d;
}

describe('good checkpoints: logits equal the safetensors fixture, bit for bit', () => {
  test.each([
    ['f32', TINY, 'OrderedDict with _metadata, tied lm_head'],
    ['f16', TINY_F16, 'plain dict, transformers 4 layout'],
    ['zip64', TINY_F16, 'zip64 headers, 64-byte aligned'],
    ['sharded', TINY, 'three shards + pytorch_model.bin.index.json'],
  ])('%s (%s: %s)', async (name, reference) => {
    await expectSameLogits(path.join(BIN, name), reference);
  });

  test('f16 requested as float32 holds exactly the stored values (converted by the model loader)', async () => {
    await expectSameLogits(path.join(BIN, 'f16'), TINY_F16, 'float32');
  });

  test('unaligned: a hand-made archive (other folder name, data at odd offsets) is copied where it cannot be viewed', async () => {
    const out = path.join(scratch, 'unaligned-converted');
    expect((await convert_checkpoint(path.join(BIN, 'unaligned'), out)).tensors).toBe(2);
    const got = rawSafetensors(path.join(out, 'model.safetensors'));
    expect(new Float32Array(new Uint8Array(got.get('transformer.ln_f.weight')!.bytes).buffer)).toEqual(new Float32Array(32).fill(1));
    expect(new Float32Array(new Uint8Array(got.get('transformer.ln_f.bias')!.bytes).buffer)).toEqual(new Float32Array(32));
  });

  test.each(['dtypes', 'dtypes-protocol4'])('%s: every dtype, offset/strided/transposed views, Parameter, 0-d, empty, tied', async (name) => {
    const dir = path.join(BIN, name);
    const out = path.join(scratch, `${name}-converted`);
    const r = await convert_checkpoint(dir, out);
    expect(r.source_format).toBe('pytorch_model.bin');
    expect(r.dropped).toEqual([['tied_b', 'tied_a']]);
    const got = rawSafetensors(path.join(out, 'model.safetensors'));
    const want = rawSafetensors(path.join(dir, 'expected.safetensors'));
    want.delete('tied_b');
    expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
    for (const [k, w] of want) {
      const g = got.get(k)!;
      expect([k, g.dtype, g.shape]).toEqual([k, w.dtype, w.shape]);
      expect(g.bytes.equals(w.bytes)).toBe(true);
    }
    expect(new Set([...got.values()].map((t) => t.dtype))).toEqual(new Set(['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL']));
  });
});

describe('malformed and malicious files: a named error, the process alive, nothing executed', () => {
  beforeAll(() => MARKERS.forEach((m) => fs.rmSync(m, { force: true })));
  afterAll(() => {
    for (const m of MARKERS) expect(fs.existsSync(m)).toBe(false);
  });

  test.each([
    ['legacy', 'ERR_CHECKPOINT_FORMAT', ['legacy format', 'torch.load(p, weights_only=True)', 'save_pretrained(out, safe_serialization=True)']],
    ['truncated', 'ERR_ZIP', ['no end-of-central-directory record', 'truncated']],
    ['missing-entry', 'ERR_ZIP', ["storage '1'", "no entry 'archive/data/1'"]],
    ['storage-too-short', 'ERR_PICKLE', ["tensor 'transformer.ln_f.weight'", 'size [4, 9], stride [9, 1]', 'needs 36 elements', 'holds 32']],
    ['entry-size-mismatch', 'ERR_PICKLE', ["storage '0' declares 32 elements", 'holds 64 bytes']],
    ['evil-os-system', 'ERR_UNSAFE_PICKLE', ["global 'os.system'", 'nothing in the file was run']],
    ['evil-eval', 'ERR_UNSAFE_PICKLE', ["global '__builtin__.eval'"]],
    ['evil-getattr', 'ERR_UNSAFE_PICKLE', ["global '__builtin__.getattr'"]],
    ['evil-stack-global', 'ERR_UNSAFE_PICKLE', ["global 'posix.system'"]],
    ['evil-inst', 'ERR_UNSAFE_PICKLE', ["instantiates 'os.system' (INST)"]],
    ['evil-nested', 'ERR_UNSAFE_PICKLE', ["global 'posix.system'"]],
  ])('%s -> %s', async (name, code, fragments) => {
    const dir = path.join(BIN, name);
    for (const load of [() => AutoModelForCausalLM.from_pretrained(dir), () => convert_checkpoint(dir, path.join(scratch, `out-${name}`))]) {
      const err = await failure(load());
      expect(err.code).toBe(code);
      expect(err.message).toContain(path.join(dir, 'pytorch_model.bin'));
      for (const f of fragments) expect(err.message).toContain(f);
    }
    expect(fs.existsSync(path.join(scratch, `out-${name}`))).toBe(false);
    for (const m of MARKERS) expect(fs.existsSync(m)).toBe(false);
  });

  test('no weights: the error names all four files transformers looks for', async () => {
    const d = path.join(scratch, 'noweights');
    fs.mkdirSync(d);
    fs.copyFileSync(path.join(TINY, 'config.json'), path.join(d, 'config.json'));
    const err = await failure(AutoModelForCausalLM.from_pretrained(d));
    expect(err.code).toBe('ERR_FILE_NOT_FOUND');
    for (const f of ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'])
      expect(err.message).toContain(path.join(d, f));
  });

  test('a shard the index lists but that is absent, and a tensor the shard lacks, are named', async () => {
    const d = path.join(scratch, 'badindex');
    fs.cpSync(path.join(BIN, 'sharded'), d, { recursive: true });
    const index = JSON.parse(fs.readFileSync(path.join(d, 'pytorch_model.bin.index.json'), 'utf8'));
    index.weight_map['transformer.extra'] = 'pytorch_model-00001-of-00003.bin';
    fs.writeFileSync(path.join(d, 'pytorch_model.bin.index.json'), JSON.stringify(index));
    expect(await failure(AutoModelForCausalLM.from_pretrained(d))).toMatchObject({ code: 'ERR_WEIGHT_MISSING', message: expect.stringContaining("'transformer.extra'") });
    fs.rmSync(path.join(d, 'pytorch_model-00002-of-00003.bin'));
    expect(await failure(AutoModelForCausalLM.from_pretrained(d))).toMatchObject({ code: 'ERR_FILE_NOT_FOUND', message: expect.stringContaining('pytorch_model-00002-of-00003.bin') });
  });

  test('Git LFS pointers, empty and foreign files say what they are', async () => {
    const cases: [string, Buffer | string, string][] = [
      ['lfs', 'version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 2836\n', 'Git LFS pointer'],
      ['empty', Buffer.alloc(0), 'the file is empty'],
      ['text', 'hello', 'not a PyTorch checkpoint'],
      ['pickle', Buffer.from([0x80, 0x02, 0x7d, 0x2e]), 'bare pickle'],
    ];
    for (const [name, bytes, fragment] of cases)
      expect(await failure(AutoModelForCausalLM.from_pretrained(binDir(name, bytes)))).toMatchObject({ code: 'ERR_CHECKPOINT_FORMAT', message: expect.stringContaining(fragment) });
  });

  test('zip damage: a compressed entry, a wrong local header, a corrupted data.pkl (CRC), a central directory past the end', async () => {
    const good = fs.readFileSync(path.join(BIN, 'f16', 'pytorch_model.bin'));
    const entries = zipEntries(good);
    const pkl = entries.find((e) => e.name.endsWith('/data.pkl'))!;
    const patched = (fn: (b: Buffer) => void) => {
      const b = Buffer.from(good);
      fn(b);
      return b;
    };
    const cases: [string, Buffer, string][] = [
      ['deflated', patched((b) => b.writeUInt16LE(8, entries[3].central + 10)), 'is compressed (method 8)'],
      ['local-name', patched((b) => (b[entries[2].local + 30] ^= 1)), 'the local header names a different entry'],
      ['crc', patched((b) => (b[pkl.data + 5] ^= 0xff)), 'fails its CRC-32 check'],
      ['cd-offset', patched((b) => b.writeBigUInt64LE(BigInt(good.length), good.lastIndexOf(Buffer.from('PK\x06\x06', 'latin1')) + 48)), 'lies outside the file'],
    ];
    for (const [name, bytes, fragment] of cases)
      expect(await failure(AutoModelForCausalLM.from_pretrained(binDir(name, bytes)))).toMatchObject({ code: 'ERR_ZIP', message: expect.stringContaining(fragment) });
  });

  test('fuzz: 400 mutated archives and 400 mutated pickles (CRC fixed up) never crash and fail only with loading codes', async () => {
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed / 2 ** 32;
    };
    const good = fs.readFileSync(path.join(BIN, 'dtypes', 'pytorch_model.bin'));
    const entries = zipEntries(good);
    const pkl = entries.find((e) => e.name.endsWith('/data.pkl'))!;
    const dir = binDir('fuzz', good);
    const seen = new Map<string, number>();
    for (let i = 0; i < 800; i++) {
      let b = Buffer.from(good);
      const inPickle = i >= 400;
      const [lo, hi] = inPickle ? [pkl.data, pkl.data + pkl.size] : [0, b.length];
      const kind = rand();
      if (!inPickle && kind < 0.15) {
        b = b.subarray(0, Math.floor(rand() * b.length));
      } else {
        for (let k = 1 + Math.floor(rand() * 4); k > 0; k--) {
          const at = lo + Math.floor(rand() * (hi - lo));
          b[at] = kind < 0.6 ? b[at] ^ (1 << Math.floor(rand() * 8)) : Math.floor(rand() * 256);
        }
      }
      if (inPickle) b.writeUInt32LE(zlib.crc32(b.subarray(pkl.data, pkl.data + pkl.size)), pkl.central + 16);
      fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), b);
      let outcome = 'ok';
      try {
        const c = await native().Checkpoint.open(dir);
        c.entries();
        c.dispose();
      } catch (err) {
        outcome = (err as { code?: string }).code ?? 'no code';
        if (!LOADING_CODES.includes(outcome)) throw new Error(`mutation ${i}: ${outcome}: ${(err as Error).message}`);
      }
      seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
    }
    // Both layers were reached.
    expect(seen.get('ERR_ZIP')).toBeGreaterThan(0);
    expect(seen.get('ERR_PICKLE')).toBeGreaterThan(0);
  });
});

describe('a model directory with only config.json, tokenizer files and pytorch_model.bin', () => {
  test('trains: a few Trainer steps end exactly where the same run on the safetensors fixture ends', async () => {
    const dir = path.join(BIN, 'f32');
    expect(fs.readdirSync(dir).sort()).toEqual(['config.json', 'generation_config.json', 'pytorch_model.bin', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
    jest.spyOn(console, 'log').mockImplementation(() => undefined);
    const run = async (modelDir: string) => {
      const tokenizer = await AutoTokenizer.from_pretrained(dir);
      const texts = ['Human: 你好\n\nAssistant: 你好！', 'Human: hello there\n\nAssistant: hi', '考试有哪些技巧？', 'one two three four five'];
      const rows = texts.map((t) => {
        const input_ids = tokenizer.encode(t);
        return { input_ids, attention_mask: input_ids.map(() => 1), labels: input_ids };
      });
      const model = await AutoModelForCausalLM.from_pretrained(modelDir);
      set_seed(3);
      const pm = await get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 4 }));
      const trainer = new Trainer({
        model: pm,
        args: new TrainingArguments({ output_dir: path.join(scratch, `train-${path.basename(modelDir)}`), per_device_train_batch_size: 2, learning_rate: 1e-2, max_steps: 4, logging_steps: 1, save_strategy: 'no', disable_tqdm: true }),
        train_dataset: rows,
        data_collator: new DataCollatorForSeq2Seq({ tokenizer }),
      });
      const result = await trainer.train();
      const prefix = asNumbers(await pm.named_parameters().find(([, p]) => p.requires_grad)![1].data());
      await pm.dispose();
      await model.dispose();
      return { loss: result.training_loss, steps: result.global_step, prefix };
    };
    const fromBin = await run(dir);
    const fromSafetensors = await run(TINY);
    (console.log as jest.Mock).mockRestore();
    expect(fromBin.steps).toBe(4);
    expect(Number.isFinite(fromBin.loss)).toBe(true);
    expect(fromBin.loss).toBe(fromSafetensors.loss);
    expect(countDiffering(fromBin.prefix, fromSafetensors.prefix)).toBe(0);
  });
});

describe('convert', () => {
  test('f32 .bin with max_shard_size 100KB: shards and index exactly as save_pretrained wrote tiny-bloom-sharded; files copied; identical logits', async () => {
    const out = path.join(scratch, 'conv-sharded');
    const r = await convert_checkpoint(path.join(BIN, 'f32'), out, { max_shard_size: '100KB' });
    const reference = path.join(FIXTURES, 'tiny-bloom-sharded');
    const shards = fs.readdirSync(reference).filter((f) => f.endsWith('.safetensors')).sort();
    expect(r.weights).toEqual([...shards, 'model.safetensors.index.json']);
    expect(r.dropped).toEqual([['lm_head.weight', 'transformer.word_embeddings.weight']]);
    expect(r.copied).toEqual(['config.json', 'generation_config.json', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
    expect(fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8')).toBe(fs.readFileSync(path.join(reference, 'model.safetensors.index.json'), 'utf8'));
    expect(fs.readdirSync(out).sort()).toEqual([...r.copied, ...r.weights].sort());
    for (const s of shards) expect(rawSafetensors(path.join(out, s)).size).toBe(rawSafetensors(path.join(reference, s)).size);
    expect(fs.readdirSync(scratch).filter((f) => f.startsWith('.'))).toEqual([]); // no temporary leftovers
    await expectSameLogits(out, TINY);
  });

  test('in place (the default): model.safetensors appears next to pytorch_model.bin and is what loads', async () => {
    const d = path.join(scratch, 'inplace');
    fs.cpSync(path.join(BIN, 'f16'), d, { recursive: true });
    const r = await convert_checkpoint(d);
    expect(r).toMatchObject({ source_format: 'pytorch_model.bin', weights: ['model.safetensors'], copied: [], tensors: 29 });
    expect(fs.readdirSync(d).sort()).toEqual(['config.json', 'model.safetensors', 'pytorch_model.bin']);
    fs.writeFileSync(path.join(d, 'pytorch_model.bin'), 'no longer read');
    await expectSameLogits(d, TINY_F16);
    expect((await convert_checkpoint(d)).weights).toEqual([]); // already safetensors: nothing to do
  });

  test('sharded .bin to one file; re-converting into the same out replaces stale shards and index', async () => {
    const out = path.join(scratch, 'conv-reshard');
    const first = await convert_checkpoint(path.join(BIN, 'sharded'), out, { max_shard_size: 50_000 });
    expect(first.weights).toEqual([1, 2, 3, 4].map((k) => `model-0000${k}-of-00004.safetensors`).concat('model.safetensors.index.json'));
    const r = await convert_checkpoint(path.join(BIN, 'sharded'), out);
    expect(r).toMatchObject({ source_format: 'pytorch_model.bin (sharded)', weights: ['model.safetensors'], tensors: 29 });
    expect(fs.readdirSync(out).filter((f) => f.includes('safetensors'))).toEqual(['model.safetensors']);
    await expectSameLogits(out, TINY);
  });

  test('the CLI command: prints what it wrote; a bad --max-shard-size is a usage error', async () => {
    const lines: string[] = [];
    const write = jest.spyOn(process.stdout, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    const notes = jest.spyOn(process.stderr, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    try {
      const out = path.join(scratch, 'cli-out');
      expect(await convertCommand({ dir: path.join(BIN, 'zip64'), out, 'max-shard-size': '1GB' })).toBe(0);
      expect(lines.join('')).toContain(`converted pytorch_model.bin -> model.safetensors in ${out}`);
      expect(lines.join('')).toContain("'lm_head.weight' is 'transformer.word_embeddings.weight' (tied weights)");
      await expectSameLogits(out, TINY_F16);
      await expect(convertCommand({ dir: path.join(BIN, 'f16'), 'max-shard-size': '5 parsecs' })).rejects.toBeInstanceOf(UsageError);
    } finally {
      write.mockRestore();
      notes.mockRestore();
    }
  });

  test('an output that is a file, or cannot be created, is a named error and leaves nothing behind', async () => {
    const file = path.join(scratch, 'a-file');
    fs.writeFileSync(file, 'x');
    expect(await failure(convert_checkpoint(path.join(BIN, 'f16'), file))).toMatchObject({ code: 'ERR_INVALID_INPUT' });
    expect(await failure(convert_checkpoint(path.join(BIN, 'f16'), path.join(file, 'sub')))).toMatchObject({ code: 'ERR_IO', message: expect.stringContaining(path.join(file, 'sub')) });
    expect(fs.readFileSync(file, 'utf8')).toBe('x');
    expect(await failure(convert_checkpoint(path.join(scratch, 'nope')))).toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
  });

  test('sizes parse as huggingface_hub does; shards split as split_torch_state_dict_into_shards', () => {
    expect([parse_size('5GB'), parse_size('100KB'), parse_size('1.5MB'), parse_size('2GiB'), parse_size(123)]).toEqual([5e9, 1e5, 1.5e6, 2 * 1024 ** 3, 123]);
    expect(() => parse_size('0GB')).toThrow(PeftNodeError);
    // hub's docstring example, limit 10: [6, 6, 2, 6, 2, 2] -> [6], [6+2], [6+2+2]; an oversized tensor alone.
    expect(plan_shards([6, 6, 2, 6, 2, 2], 10)).toEqual([[0], [1, 2], [3, 4, 5]]);
    expect(plan_shards([3, 12, 3], 10)).toEqual([[1], [0, 2]]);
  });
});
