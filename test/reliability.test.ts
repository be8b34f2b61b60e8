/**
 * Reliability (issue #8): named errors for everything the fuzzer found; non-finite training handled without losing the
 * last good checkpoint (ERR_NONFINITE_LOSS); dispose() and concurrency (dispose waits for a running step, every use
 * after dispose is ERR_DISPOSED, two models run on two pool threads with sequential results, the event loop keeps
 * ticking during train and generate); input edges (empty data and batches, all-zero masks, all -100 labels, inputs
 * too large for memory, non-UTF-8 text, a tokenizer without a pad token).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AdamW,
  AutoModelForCausalLM,
  AutoTokenizer,
  BloomForCausalLM,
  DataCollatorForSeq2Seq,
  ERROR_CODES,
  PeftModelForCausalLM,
  PeftNodeError,
  PreTrainedTokenizer,
  PrefixTuningConfig,
  Tensor,
  Trainer,
  TrainingArguments,
  get_peft_model,
  clip_grad_norm_,
  load_dataset,
  readSafetensors,
  runtime_info,
  set_num_threads,
  set_seed,
  writeSafetensors,
} from '../lib';
import { rethrowNative } from '../lib/errors';
import { list_checkpoints } from '../lib/trainer/checkpoint';
import { TINY, asNumbers, tmpDir, writeRandomBloom } from './helpers';

let model: BloomForCausalLM;
let tokenizer: PreTrainedTokenizer;
let scratch: string;
let n = 0;
const fresh = (name: string) => path.join(scratch, `${name}-${n++}`);

beforeAll(async () => {
  model = await AutoModelForCausalLM.from_pretrained(TINY);
  tokenizer = await AutoTokenizer.from_pretrained(TINY);
  scratch = tmpDir('peft-node-reliability-');
});
afterAll(async () => {
  await model.dispose();
  fs.rmSync(scratch, { recursive: true, force: true });
});

async function rejection(p: Promise<unknown> | (() => unknown)): Promise<PeftNodeError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return e as PeftNodeError;
  }
  throw new Error('expected a rejection');
}

async function expectCode(p: Promise<unknown> | (() => unknown), code: string, ...fragments: (string | RegExp)[]): Promise<PeftNodeError> {
  const err = await rejection(p);
  expect([err instanceof PeftNodeError, err.code, err.message]).toEqual([true, code, err.message]);
  for (const f of fragments) expect(err.message).toMatch(f);
  return err;
}

const quiet = <T>(f: () => Promise<T>): Promise<T> => {
  const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
  return f().finally(() => log.mockRestore());
};

const rows = (count: number, labels: (ids: number[], i: number) => number[] = (ids) => ids) =>
  Array.from({ length: count }, (_, i) => {
    const ids = Array.from({ length: 5 }, (_, j) => 20 + ((i * 37 + j * 11) % 900));
    return { input_ids: ids, attention_mask: ids.map(() => 1), labels: labels(ids, i) };
  });

function args(output_dir: string, extra: Partial<ConstructorParameters<typeof TrainingArguments>[0]> = {}) {
  return new TrainingArguments({
    output_dir, per_device_train_batch_size: 2, max_steps: 12, logging_steps: 1, save_steps: 1, learning_rate: 1e-2, disable_tqdm: true, ...extra,
  });
}

function peft(seed = 0, extra: Record<string, unknown> = {}): PeftModelForCausalLM {
  set_seed(seed);
  return get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 3, ...extra }));
}

async function finite(pm: PeftModelForCausalLM): Promise<boolean> {
  for (const [, p] of pm.named_parameters().filter(([, p]) => p.requires_grad)) if (!asNumbers(await p.data()).every(Number.isFinite)) return false;
  return true;
}

// -----------------------------------------------------------------------------------------------------------------

describe('named errors', () => {
  test("README's error table documents exactly ERROR_CODES", () => {
    const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
    const table = readme.slice(readme.indexOf('\n## Errors'), readme.indexOf('\n## Layout'));
    const documented = new Set([...table.matchAll(/^\| `(ERR_\w+)`(?: \/ `(ERR_\w+)`)?/gm)].flatMap((m) => [m[1], m[2]]).filter(Boolean));
    expect([...documented].sort()).toEqual([...ERROR_CODES].sort());
  });

  test('native/core/error_codes.h is generated from ERROR_CODES and up to date; native code names no code by hand', () => {
    const root = path.join(__dirname, '..');
    const check = spawnSync(process.execPath, [path.join(root, 'scripts', 'gen_error_codes.js'), '--check'], { encoding: 'utf8' });
    expect({ status: check.status, stderr: check.stderr }).toEqual({ status: 0, stderr: '' });
    const header = fs.readFileSync(path.join(root, 'native', 'core', 'error_codes.h'), 'utf8');
    expect([...header.matchAll(/"(ERR_\w+)"/g)].map((m) => m[1])).toEqual([...ERROR_CODES]);
    const literals: string[] = [];
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const f = path.join(dir, e.name);
        if (e.isDirectory()) walk(f);
        else if (/\.(cpp|h)$/.test(e.name) && e.name !== 'error_codes.h')
          for (const m of fs.readFileSync(f, 'utf8').matchAll(/"(ERR_\w+)"/g)) literals.push(`${path.relative(root, f)}: ${m[1]}`);
      }
    };
    walk(path.join(root, 'native'));
    expect(literals).toEqual([]);
  });

  test('native errors: documented codes pass through; an unknown code is ERR_TORCH naming it; allocator failures are ERR_OUT_OF_MEMORY', () => {
    const as = (err: unknown) => {
      try {
        rethrowNative(err);
      } catch (e) {
        return [(e as PeftNodeError).code, (e as Error).message];
      }
    };
    expect(as(Object.assign(new Error('bad'), { code: 'ERR_JSON' }))).toEqual(['ERR_JSON', 'bad']);
    expect(as(Object.assign(new Error('bad'), { code: 'ERR_SOMETHING_NEW' }))).toEqual(['ERR_TORCH', 'ERR_SOMETHING_NEW: bad']);
    expect(as(Object.assign(new Error("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), { code: 'ERR_TORCH' }))[0]).toBe('ERR_OUT_OF_MEMORY');
    expect(as(Object.assign(new Error('CUDA out of memory. Tried to allocate 2.00 GiB'), { code: 'ERR_TORCH' }))[0]).toBe('ERR_OUT_OF_MEMORY');
  });
});

describe('corrupt files the fuzzer found (each was a TypeError, RangeError, SyntaxError, a hang or a silent disagreement)', () => {
  /** A safetensors file with `header` (object or raw JSON text) and `data` bytes. */
  function rawSafetensors(file: string, header: unknown, data = 16): string {
    const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
    const out = Buffer.alloc(8 + json.length + data);
    out.writeBigUInt64LE(BigInt(json.length));
    json.copy(out, 8);
    fs.writeFileSync(file, out);
    return file;
  }
  test.each([
    ['a shape that is not an array', { x: { dtype: 'F32', shape: 'x', data_offsets: [0, 4] } }, 'ERR_SAFETENSORS_HEADER', /no array 'shape'/],
    ['data_offsets that are not a pair', { x: { dtype: 'F32', shape: [1], data_offsets: 4 } }, 'ERR_SAFETENSORS_HEADER', /data_offsets/],
    ['a header that is null', 'null', 'ERR_SAFETENSORS_HEADER', /not a JSON object/],
    ['an entry that is null', { x: null }, 'ERR_SAFETENSORS_HEADER', /'x' entry is not an object/],
    ['negative offsets (read before the data)', { x: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, 'ERR_SAFETENSORS_OFFSETS', /non-negative/],
    ['a fractional dimension', { x: { dtype: 'F32', shape: [1.5], data_offsets: [0, 6] } }, 'ERR_SAFETENSORS_HEADER', /non-integer/],
    ['a negative dimension', { x: { dtype: 'F32', shape: [-1, -4], data_offsets: [0, 16] } }, 'ERR_SAFETENSORS_HEADER', /negative/],
    ['overlapping tensors', { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 'ERR_SAFETENSORS_OFFSETS', /overlap/],
    ['a shape nested 100,000 deep', `{"x": {"dtype": "F32", "shape": ${'['.repeat(100000)}${']'.repeat(100000)}, "data_offsets": [0, 4]}}`, 'ERR_SAFETENSORS_HEADER', /nested too deeply/],
    ['metadata that is not strings', { __metadata__: { format: 1 } }, 'ERR_SAFETENSORS_HEADER', /__metadata__/],
  ])('adapter / checkpoint safetensors (TS reader): %s', async (_name, header, code, fragment) => {
    await expectCode(() => readSafetensors(rawSafetensors(fresh('st') + '.safetensors', header)), code, fragment);
  });

  let checkpoint: string;
  beforeAll(async () => {
    const pm = peft(1, { prefix_projection: true, encoder_hidden_size: 8 });
    const out = fresh('ckpt');
    await quiet(() => new Trainer({ model: pm, args: args(out, { max_steps: 2, save_steps: 2 }), train_dataset: rows(6) }).train());
    checkpoint = path.join(out, 'checkpoint-2');
    await pm.dispose();
  });

  async function resumeFrom(edit: (dir: string) => void) {
    const dir = fresh('corrupt');
    fs.cpSync(checkpoint, dir, { recursive: true });
    edit(dir);
    const pm = peft(2, { prefix_projection: true, encoder_hidden_size: 8 });
    try {
      return await quiet(() => new Trainer({ model: pm, args: args(fresh('out'), { max_steps: 3, save_strategy: 'no' }), train_dataset: rows(6) }).train({ resume_from_checkpoint: dir }));
    } finally {
      await pm.dispose();
    }
  }
  const editJson = (file: string, f: (o: Record<string, unknown>) => unknown) => (dir: string) => {
    const p = path.join(dir, file);
    fs.writeFileSync(p, JSON.stringify(f(JSON.parse(fs.readFileSync(p, 'utf8')))));
  };

  test.each([
    ['resume_state.json truncated', (d: string) => fs.writeFileSync(path.join(d, 'resume_state.json'), '{"tr_loss": 1,'), 'ERR_JSON', /resume_state\.json: invalid JSON at line 1/],
    ['resume_state.json not an object', (d: string) => fs.writeFileSync(path.join(d, 'resume_state.json'), '[]'), 'ERR_CONFIG', /expected a JSON object/],
    ['global_step a string ("2" + 1 would be "21")', editJson('trainer_state.json', (o) => ({ ...o, global_step: '2' })), 'ERR_CONFIG', /'global_step' must be an integer >= 0, got "2"/],
    ['global_step -2^63 (the loop would run ~3e18 epochs)', editJson('trainer_state.json', (o) => ({ ...o, global_step: -(2 ** 63) })), 'ERR_CONFIG', /global_step/],
    ['log_history not an array', editJson('trainer_state.json', (o) => ({ ...o, log_history: 5 })), 'ERR_CONFIG', /log_history/],
    ['trainer_state.json is null', (d: string) => fs.writeFileSync(path.join(d, 'trainer_state.json'), 'null'), 'ERR_CONFIG', /expected a JSON object/],
    ['globalstep_last_logged beyond global_step', editJson('resume_state.json', (o) => ({ ...o, globalstep_last_logged: 99 })), 'ERR_CONFIG', /globalstep_last_logged/],
    ['an AdamW step count that is not a number', (d: string) => {
      const f = path.join(d, 'optimizer.safetensors');
      const { tensors, metadata } = readSafetensors(f);
      writeSafetensors(f, [...tensors.entries()], { ...metadata, 'step.embedding.weight': 'abc' });
    }, 'ERR_CONFIG', /step\.embedding\.weight/],
  ])('checkpoint: %s', async (_name, edit, code, fragment) => {
    await expectCode(resumeFrom(edit), code, fragment);
  });

  test("checkpoint: Python's NaN / Infinity in trainer_state.json (json.dumps writes them) resume fine", async () => {
    const out = await resumeFrom((dir) => {
      const p = path.join(dir, 'trainer_state.json');
      fs.writeFileSync(p, fs.readFileSync(p, 'utf8').replace(/"grad_norm": [^,\n]+/, '"grad_norm": NaN').replace(/"loss": [^,\n]+/, '"loss": Infinity'));
    });
    expect(out.global_step).toBe(3);
  });

  test('dataset nested 100,000 deep: ERR_JSON at its line and column, not a stack overflow', async () => {
    const dir = fresh('deep');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'train.json'), `[{"instruction": "x", "input": ${'['.repeat(100000)}${']'.repeat(100000)}}]`);
    await expectCode(load_dataset('json', { data_dir: dir }), 'ERR_JSON', /train\.json: line 1 column \d+: nesting deeper than 1000 levels/);
    fs.writeFileSync(path.join(dir, 'train.json'), `{"a": 1}\n{"a": ${'['.repeat(5000)}1${']'.repeat(5000)}}\n`);
    await expectCode(load_dataset('json', { data_dir: dir }), 'ERR_JSON', /line 2 column \d+: nesting deeper/);
    fs.writeFileSync(path.join(dir, 'train.json'), `[{"a": ${'['.repeat(100000)}}]`); // invalid and deep: the error locator must not recurse either
    await expectCode(load_dataset('json', { data_dir: dir }), 'ERR_JSON', /nesting deeper than 1000 levels/);
  });

  test('a tokenizer.json whose pipeline fails only when used (tokenizers.js builds it lazily) is refused at load, ERR_CONFIG', async () => {
    const dir = fresh('tok');
    fs.cpSync(path.join(__dirname, 'fixtures', 'tokenizer'), dir, { recursive: true });
    const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
    tj.pre_tokenizer.pretokenizers[0].behavior = 5;
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
    await expectCode(AutoTokenizer.from_pretrained(dir), 'ERR_CONFIG', /tokenizer\.json of .* describes a pipeline that fails while encoding/);
  });

  test.each([
    ['a temperature nested 5,000 deep', `{"temperature": ${'['.repeat(5000)}1${']'.repeat(5000)}}`, 'ERR_JSON', /nesting deeper/],
    ['a temperature that is a string', '{"temperature": "hot"}', 'ERR_CONFIG', /'temperature' must be a number/],
    ['eos_token_id a list of strings', '{"eos_token_id": ["</s>"]}', 'ERR_CONFIG', /eos_token_id/],
    ['a field named like an Object method', '{"constructor": 1, "toString": 2, "max_length": 8}', null, null],
  ])('generation_config.json with %s', async (_name, text, code, fragment) => {
    const dir = fresh('gen');
    fs.cpSync(TINY, dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'generation_config.json'), text);
    if (code === null) {
      const m = await AutoModelForCausalLM.from_pretrained(dir);
      expect(m.generation_config.max_length).toBe(8);
      expect(typeof m.generation_config.toString).toBe('function');
      await m.dispose();
    } else await expectCode(AutoModelForCausalLM.from_pretrained(dir), code, fragment!);
  });

  test('config.json with a duplicate key: TypeScript and the native loader read the same (the last, as Python and JSON.parse)', async () => {
    const dir = fresh('dup');
    fs.cpSync(TINY, dir, { recursive: true });
    const text = fs.readFileSync(path.join(dir, 'config.json'), 'utf8');
    fs.writeFileSync(path.join(dir, 'config.json'), text.replace('"apply_residual_connection_post_layernorm": false', '"apply_residual_connection_post_layernorm": true, "apply_residual_connection_post_layernorm": false'));
    const m = await AutoModelForCausalLM.from_pretrained(dir);
    const native = (m as unknown as { handle: { config(): Record<string, unknown> } }).handle.config();
    expect([m.config.apply_residual_connection_post_layernorm, native.apply_residual_connection_post_layernorm]).toEqual([false, false]);
    const a = await m.forward({ input_ids: [[5, 6, 7]] });
    const b = await model.forward({ input_ids: [[5, 6, 7]] });
    expect(asNumbers(a.logits!)).toEqual(asNumbers(b.logits!));
    await m.dispose();
  });

  test('a safetensors header naming a tensor twice: the last entry wins, natively as in the TS reader', async () => {
    const dir = fresh('dupst');
    fs.cpSync(TINY, dir, { recursive: true });
    const file = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(file);
    const len = Number(buf.readBigUInt64LE(0));
    const header = buf.subarray(8, 8 + len).toString('utf8').trimEnd();
    const data = buf.subarray(8 + len);
    const bias = JSON.parse(header)['transformer.ln_f.bias'];
    // Append 32 floats of 7 and a second 'transformer.ln_f.bias' pointing at them.
    const extra = Buffer.from(new Float32Array(32).fill(7).buffer);
    const dup = { ...bias, data_offsets: [data.length, data.length + 128] };
    const text = header.slice(0, -1) + `,"transformer.ln_f.bias":${JSON.stringify(dup)}}`;
    const h = Buffer.from(text + ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8));
    const lenBuf = Buffer.alloc(8);
    lenBuf.writeBigUInt64LE(BigInt(h.length));
    fs.writeFileSync(file, Buffer.concat([lenBuf, h, data, extra]));
    expect(Array.from(readSafetensors(file).tensors.get('transformer.ln_f.bias')!.data as Float32Array).slice(0, 2)).toEqual([7, 7]);
    const m = await AutoModelForCausalLM.from_pretrained(dir);
    expect(Array.from((await m.get_parameter('transformer.ln_f.bias')).data as Float32Array).slice(0, 2)).toEqual([7, 7]);
    await m.dispose();
  });
});

// -----------------------------------------------------------------------------------------------------------------

describe('training faults: non-finite losses', () => {
  // Simulates divergence: after optimizer step `step`, the prefix becomes NaN.
  const poisonAt = (step: number) => ({
    on_step_end: async (_args: unknown, state: { global_step: number }) => {
      if (state.global_step === step) await (await current!.prompt_encoder()).set_parameter('embedding.weight', new Float32Array(3 * 128).fill(NaN));
    },
  });
  let current: PeftModelForCausalLM | undefined;

  test('NaN from step 5 on, limit 4: ERR_NONFINITE_LOSS at step 9 naming the last good checkpoint, which is kept and resumes', async () => {
    const out = fresh('nan');
    current = peft(3);
    const warn = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    const trainer = new Trainer({ model: current, args: args(out, { save_total_limit: 2 }), train_dataset: rows(8), callbacks: [poisonAt(5)], max_consecutive_nonfinite_steps: 4 });
    const err = await quiet(() => expectCode(trainer.train(), 'ERR_NONFINITE_LOSS', /stopped at step 9/, /4 consecutive optimizer steps \(steps 6-9\)/, /no longer finite/, /checkpoint-4/));
    const warnings = warn.mock.calls.map((c) => String(c[0]));
    warn.mockRestore();
    // Saves at steps 5-8 were skipped (the prefix was NaN from step 5's callback on); rotation kept 3 and 4.
    expect(list_checkpoints(out).map((d) => path.basename(d))).toEqual(['checkpoint-3', 'checkpoint-4']);
    expect(warnings.filter((w) => /not saving checkpoint-\d+: the prefix parameters are NaN/.test(w))).toHaveLength(4);
    for (const dir of list_checkpoints(out))
      expect(asNumbers(readSafetensors(path.join(dir, 'trainable_state.safetensors')).tensors.get('embedding.weight')!).every(Number.isFinite)).toBe(true);
    // NaN losses were filtered from the logs as HF does; the NaN grad norms are logged (and would serialize as NaN).
    expect(trainer.state.log_history.slice(0, 9).every((e) => Number.isFinite(e.loss))).toBe(true);
    expect(trainer.state.log_history.slice(5, 9).every((e) => Number.isNaN(e.grad_norm))).toBe(true);
    await current.dispose();
    // Resuming from the named checkpoint with a working setup gets to the end.
    const last = /checkpoint-\d+/.exec(err.message)![0];
    current = peft(4);
    const resumed = await quiet(() => new Trainer({ model: current!, args: args(out, { save_total_limit: 2 }), train_dataset: rows(8) }).train({ resume_from_checkpoint: path.join(out, last) }));
    expect(resumed.global_step).toBe(12);
    expect(await finite(current)).toBe(true);
    await current.dispose();
  });

  test('labels all -100 (GA 1): NaN losses as in HF, the prefix stays finite and is saved; the run stops after the limit', async () => {
    const out = fresh('masked');
    const pm = peft(5);
    const trainer = new Trainer({ model: pm, args: args(out, { save_steps: 2 }), train_dataset: rows(8, (ids) => ids.map(() => -100)), max_consecutive_nonfinite_steps: 3 });
    await quiet(() => expectCode(trainer.train(), 'ERR_NONFINITE_LOSS', /steps 1-3/, /still finite/, /checkpoint-2/, /labels are all -100/));
    expect(list_checkpoints(out).map((d) => path.basename(d))).toEqual(['checkpoint-2']);
    expect(await finite(pm)).toBe(true);
    await pm.dispose();
  });

  test('a few all -100 batches among good ones: losses filtered from the logs, the streak resets, the run completes', async () => {
    const pm = peft(6);
    const data = rows(8, (ids, i) => (i % 4 === 0 ? ids.map(() => -100) : ids));
    const trainer = new Trainer({ model: pm, args: args(fresh('mixed'), { per_device_train_batch_size: 1, max_steps: 16, save_strategy: 'no' }), train_dataset: data, max_consecutive_nonfinite_steps: 5 });
    const out = await quiet(() => trainer.train());
    expect(out.global_step).toBe(16);
    expect(trainer.state.log_history.filter((e) => 'loss' in e).every((e) => Number.isFinite(e.loss))).toBe(true);
    expect(Number.isFinite(out.training_loss)).toBe(true);
    await pm.dispose();
  });

  test('max_consecutive_nonfinite_steps: null never stops; still no checkpoint of NaN weights is written', async () => {
    const out = fresh('nolimit');
    current = peft(7);
    const warn = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    const trainer = new Trainer({ model: current, args: args(out, { max_steps: 8, save_steps: 1, logging_nan_inf_filter: false }), train_dataset: rows(8), callbacks: [poisonAt(6)], max_consecutive_nonfinite_steps: null });
    const result = await quiet(() => trainer.train());
    warn.mockRestore();
    expect(result.global_step).toBe(8);
    expect(list_checkpoints(out).map((d) => path.basename(d))).toEqual(['checkpoint-1', 'checkpoint-2', 'checkpoint-3', 'checkpoint-4', 'checkpoint-5']);
    await current.dispose();
  });

  test('a NaN loss in the log (logging_nan_inf_filter off) is written as NaN and the checkpoint resumes', async () => {
    const out = fresh('nanlog');
    const pm = peft(8);
    // Two of the four rows have all labels masked (NaN loss, finite weights): their log entries and checkpoints hold NaN.
    const data = rows(4, (ids, i) => (i < 2 ? ids.map(() => -100) : ids));
    const trainer = new Trainer({ model: pm, args: args(out, { max_steps: 4, per_device_train_batch_size: 1, logging_nan_inf_filter: false }), train_dataset: data });
    await quiet(() => trainer.train());
    const texts = list_checkpoints(out).map((d) => fs.readFileSync(path.join(d, 'trainer_state.json'), 'utf8'));
    expect(texts.some((t) => /"loss": NaN/.test(t))).toBe(true);
    await pm.dispose();
    const pm2 = peft(9);
    const resumed = await quiet(() => new Trainer({ model: pm2, args: args(out, { max_steps: 5, per_device_train_batch_size: 1, logging_nan_inf_filter: false }), train_dataset: data }).train({ resume_from_checkpoint: true }));
    expect(resumed.global_step).toBe(5);
    await pm2.dispose();
  });

  test.each([0, -1, 1.5, '3'])('max_consecutive_nonfinite_steps %p is refused', (v) => {
    const pm = peft(10);
    expect(() => new Trainer({ model: pm, max_consecutive_nonfinite_steps: v as number })).toThrow(/max_consecutive_nonfinite_steps must be a positive integer or null/);
    return pm.dispose();
  });
});

// -----------------------------------------------------------------------------------------------------------------


/** Counts setInterval(10 ms) ticks while `f` runs: ticks per second and the longest gap between two ticks. */
async function ticking<T>(f: () => Promise<T>): Promise<{ result: T; perSecond: number; maxGapMs: number; ms: number }> {
  let ticks = 0;
  let last = performance.now();
  let maxGap = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 10);
  const start = performance.now();
  const result = await f();
  const ms = performance.now() - start;
  clearInterval(timer);
  maxGap = Math.max(maxGap, performance.now() - last);
  return { result, perSecond: (ticks / ms) * 1000, maxGapMs: maxGap, ms };
}

describe('dispose and concurrency', () => {
  test('dispose() during a running step waits for it; then every use is ERR_DISPOSED: model, PEFT model, encoder, trainer', async () => {
    const m = await AutoModelForCausalLM.from_pretrained(TINY);
    set_seed(0);
    const pm = get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2, prefix_projection: true }));
    const enc = await pm.prompt_encoder();
    const orphan = get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 })); // its base goes away below
    const ids = [[5, 6, 7, 8]];
    const params = pm.parameters().filter((p) => p.requires_grad);
    const past = await pm.get_prompt(1);
    // A step in flight, then dispose: the step completes with a finite loss, dispose resolves after it.
    const running = pm.forward({ input_ids: ids, labels: ids }, { backward: true });
    const disposing = pm.dispose();
    expect(Number.isFinite((await running).loss)).toBe(true);
    await disposing;
    const modelRunning = m.generate({ input_ids: ids, max_new_tokens: 4 });
    const modelDisposing = m.dispose();
    expect((await modelRunning).dims).toEqual([1, 8]);
    await modelDisposing;

    const peftUses: [string, () => unknown][] = [
      ['forward', () => pm.forward({ input_ids: ids })],
      ['generate', () => pm.generate({ input_ids: ids, max_new_tokens: 1 })],
      ['save_pretrained', () => pm.save_pretrained(fresh('disposed'))],
      ['prompt_encoder', () => pm.prompt_encoder()],
      ['named_parameters', () => pm.named_parameters()],
      ['print_trainable_parameters', () => pm.print_trainable_parameters()],
      ['get_prompt_embedding_to_save', () => pm.get_prompt_embedding_to_save()],
      ['zero_grad', () => pm.zero_grad()],
    ];
    const encoderUses: [string, () => unknown][] = [
      ['parameter_shapes', () => enc.parameter_shapes()],
      ['get_parameter', () => enc.get_parameter('embedding.weight')],
      ['get_grad', () => enc.get_grad('embedding.weight')],
      ['set_parameter', () => enc.set_parameter('embedding.weight', new Float32Array(2 * 32))],
      ['zero_grad', () => enc.zero_grad()],
      ['prompt_embeddings', () => enc.prompt_embeddings()],
      ['get_prompt', () => enc.get_prompt(1)],
      // Parameter lists over the disposed encoder
      ['AdamW.step', () => new AdamW(params).step()],
      ['AdamW.zero_grad', () => new AdamW(params).zero_grad()],
      ['clip_grad_norm_', () => clip_grad_norm_(params, 1)],
      // past_key_values made before: the model refuses them once disposed
      ['PastKeyValues.grad after dispose', async () => { await past.dispose(); return past.grad(); }],
    ];
    const modelUses: [string, () => unknown][] = [
      ['forward', () => m.forward({ input_ids: ids })],
      ['generate', () => m.generate({ input_ids: ids, max_new_tokens: 1 })],
      ['get_parameter', () => m.get_parameter('transformer.ln_f.bias')],
      ['get_grad', () => m.get_grad('transformer.ln_f.bias')],
      ['named_parameters', () => m.named_parameters()],
      ['state_dict', () => m.state_dict()],
      ['load_state_dict', () => m.load_state_dict({}, { strict: false })],
      ['device', () => m.device],
      ['dtype', () => m.dtype],
      ['zero_grad', () => m.zero_grad()],
    ];
    for (const [name, use] of [...peftUses, ...encoderUses, ...modelUses]) {
      const err = await rejection(async () => use());
      expect([name, err instanceof PeftNodeError, err.code]).toEqual([name, true, 'ERR_DISPOSED']);
    }
    // A trainer over a disposed model refuses to start; a PEFT model over a disposed base refuses to run.
    await expectCode(new Trainer({ model: pm, args: args(fresh('t')), train_dataset: rows(4) }).train(), 'ERR_DISPOSED');
    await expectCode(orphan.forward({ input_ids: ids }), 'ERR_DISPOSED');
    await expectCode(() => get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 })), 'ERR_DISPOSED');
    await orphan.dispose();
    await Promise.all([pm.dispose(), m.dispose(), enc.dispose()]); // idempotent, also concurrently
  });

  test('dispose() while Trainer.train() runs: the step in flight completes, train() rejects with ERR_DISPOSED, nothing crashes', async () => {
    const pm = peft(11);
    let disposing: Promise<void> | undefined;
    const stopper = { on_step_end: (_a: unknown, state: { global_step: number }) => { if (state.global_step === 2) disposing = pm.dispose(); } };
    const trainer = new Trainer({ model: pm, args: args(fresh('dt'), { save_strategy: 'no' }), train_dataset: rows(8), callbacks: [stopper] });
    await quiet(() => expectCode(trainer.train(), 'ERR_DISPOSED'));
    await disposing;
    expect(trainer.state.global_step).toBe(2);
    // The shared base model is unaffected.
    expect(Number.isFinite((await model.forward({ input_ids: [[5, 6]], labels: [[5, 6]] })).loss)).toBe(true);
  });

  describe('with larger random models', () => {
    let dirA: string, dirB: string;
    beforeAll(() => {
      dirA = writeRandomBloom(fresh('rbA'), 256, 4, 8, 1000, 1);
      dirB = writeRandomBloom(fresh('rbB'), 256, 4, 8, 1000, 2);
    });
    const threads = runtime_info().numThreads;
    afterEach(() => set_num_threads(threads));

    test('two models on two pool threads at once: results equal to running them one after the other', async () => {
      set_num_threads(1);
      const a = await AutoModelForCausalLM.from_pretrained(dirA);
      const b = await AutoModelForCausalLM.from_pretrained(dirB);
      const ids = Array.from({ length: 4 }, (_, r) => Array.from({ length: 160 }, (_, i) => (r * 131 + i * 7) % 1000));
      const prefix = new Tensor('float32', Float32Array.from({ length: 10 * 2048 }, (_, i) => Math.sin(i) * 0.1), [10, 2048]);
      const step = (m: BloomForCausalLM) => m.forward({ input_ids: ids, labels: ids }, { prefix, backward: true });
      const gen = (m: BloomForCausalLM) => m.generate({ input_ids: [ids[0].slice(0, 8), ids[1].slice(0, 8)], max_new_tokens: 24, do_sample: true, seed: 5 });
      let t = performance.now();
      const seq = [await step(a), await step(b), await gen(a), await gen(b)];
      const sequentialMs = performance.now() - t;
      t = performance.now();
      const par = await Promise.all([step(a), step(b), gen(a), gen(b)]);
      const parallelMs = performance.now() - t;
      for (const i of [0, 1]) {
        const [x, y] = [seq[i] as Awaited<ReturnType<typeof step>>, par[i] as Awaited<ReturnType<typeof step>>];
        expect(y.loss).toBe(x.loss);
        expect(asNumbers(y.logits!)).toEqual(asNumbers(x.logits!));
        expect(asNumbers(y.prefix_grad!)).toEqual(asNumbers(x.prefix_grad!));
      }
      for (const i of [2, 3]) expect((par[i] as Tensor).tolist()).toEqual((seq[i] as Tensor).tolist());
      // eslint-disable-next-line no-console
      console.log(`two models: sequential ${sequentialMs.toFixed(0)} ms, concurrent ${parallelMs.toFixed(0)} ms (one intra-op thread each)`);
      await Promise.all([a.dispose(), b.dispose()]);
    });

    test('the event loop keeps ticking (>= 10 ticks/s) during Trainer.train() and during generate()', async () => {
      const m = await AutoModelForCausalLM.from_pretrained(dirA);
      set_seed(0);
      const pm = get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 10 }));
      const data = Array.from({ length: 8 }, (_, r) => {
        const ids = Array.from({ length: 128 }, (_, i) => (r * 131 + i * 7) % 1000);
        return { input_ids: ids, attention_mask: ids.map(() => 1), labels: ids };
      });
      const train = await quiet(() => ticking(() => new Trainer({ model: pm, args: args(fresh('tick'), { max_steps: 4, per_device_train_batch_size: 4, save_strategy: 'no' }), train_dataset: data }).train()));
      const generate = await ticking(() => pm.generate({ input_ids: [data[0].input_ids.slice(0, 16)], max_new_tokens: 150 }));
      // eslint-disable-next-line no-console
      console.log(`event loop: train ${train.ms.toFixed(0)} ms at ${train.perSecond.toFixed(0)} ticks/s (longest gap ${train.maxGapMs.toFixed(0)} ms); ` +
        `generate ${generate.ms.toFixed(0)} ms at ${generate.perSecond.toFixed(0)} ticks/s (longest gap ${generate.maxGapMs.toFixed(0)} ms)`);
      expect(train.ms).toBeGreaterThan(300);
      expect(train.perSecond).toBeGreaterThanOrEqual(10);
      expect(generate.perSecond).toBeGreaterThanOrEqual(10);
      await pm.dispose();
      await m.dispose();
    });
  });
});

// -----------------------------------------------------------------------------------------------------------------

describe('input edges', () => {
  test('an empty dataset: load_dataset gives 0 rows, map keeps 0 rows, Trainer.train() says there is not one batch', async () => {
    const dir = fresh('empty');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'train.json'), '[]');
    const ds = (await load_dataset('json', { data_dir: dir })).train;
    expect([ds.num_rows, ds.map((r) => r).num_rows]).toEqual([0, 0]);
    const pm = peft(12);
    await expectCode(new Trainer({ model: pm, args: args(fresh('e')), train_dataset: ds }).train(), 'ERR_INVALID_INPUT', /train_dataset has 0 rows/);
    await expectCode(new Trainer({ model: pm, args: args(fresh('e')), train_dataset: [] }).train(), 'ERR_INVALID_INPUT', /0 rows/);
    await pm.dispose();
  });

  test('an empty batch or sequence is ERR_INVALID_INPUT: collator([]), input_ids [] / [[]], an empty text', async () => {
    const collator = new DataCollatorForSeq2Seq({ tokenizer, padding: true });
    await expectCode(() => collator([]), 'ERR_INVALID_INPUT', /non-empty/);
    await expectCode(model.forward({ input_ids: [] }), 'ERR_INVALID_INPUT', /non-empty/);
    await expectCode(model.forward({ input_ids: [[]] }), 'ERR_INVALID_INPUT', /non-empty/);
    await expectCode(model.forward({ input_ids: tokenizer('').input_ids }), 'ERR_INVALID_INPUT', /non-empty/);
    await expectCode(model.generate({ input_ids: [[]], max_new_tokens: 2 }), 'ERR_INVALID_INPUT', /non-empty/);
  });

  test('a row whose attention mask is all zeros: finite logits and loss (with and without a prefix), and its neighbour is unchanged', async () => {
    const ids = [[5, 6, 7, 8], [9, 10, 11, 12]];
    const pm = peft(13);
    for (const run of [(x: object) => model.forward(x as never), (x: object) => pm.forward(x as never)]) {
      const masked = await run({ input_ids: ids, attention_mask: [[0, 0, 0, 0], [1, 1, 1, 1]], labels: ids });
      expect(asNumbers(masked.logits!).every(Number.isFinite)).toBe(true);
      expect(Number.isFinite(masked.loss)).toBe(true);
      const alone = await run({ input_ids: [ids[1]] });
      const V = 1000;
      expect(Math.max(...asNumbers(masked.logits!).slice(4 * V).map((v, i) => Math.abs(v - asNumbers(alone.logits!)[i])))).toBeLessThan(1e-5);
    }
    await pm.dispose();
  });

  test('labels all -100: loss NaN as in HF (0 / 0), backward gives zero (finite) gradients', async () => {
    const pm = peft(14);
    const out = await pm.forward({ input_ids: [[5, 6, 7]], labels: [[-100, -100, -100]] }, { backward: true });
    expect(out.loss).toBeNaN();
    const grad = await (await pm.prompt_encoder()).get_grad('embedding.weight');
    expect(grad === null || asNumbers(grad).every((v) => v === 0)).toBe(true);
    await pm.dispose();
  });

  test('inputs too large for memory are refused before anything is allocated (ERR_OUT_OF_MEMORY)', async () => {
    // B·T·V = 4.4e9 logits: more than a JavaScript array can hold, whatever the machine.
    const big = new Tensor('int32', new Int32Array(4400 * 1000).fill(5), [4400, 1000]);
    let t = performance.now();
    await expectCode(model.forward({ input_ids: big }), 'ERR_OUT_OF_MEMORY', /forward on a \[4400, 1000\] batch/, /2\^32/);
    expect(performance.now() - t).toBeLessThan(2000);
    // A KV cache for 10^12 new tokens.
    t = performance.now();
    await expectCode(model.generate({ input_ids: [[5, 6]], max_new_tokens: 1e12 }), 'ERR_OUT_OF_MEMORY', /generate .* needs at least .* GiB, more than this machine/);
    expect(performance.now() - t).toBeLessThan(2000);
    // The model still works.
    expect(Number.isFinite((await model.forward({ input_ids: [[5, 6]], labels: [[5, 6]] })).loss)).toBe(true);
  });

  test('non-UTF-8 text: lone surrogates tokenize, a split character decodes to U+FFFD, invalid bytes in a dataset load as U+FFFD', async () => {
    const ids = tokenizer('a\uD800b\uDFFFc').input_ids;
    expect(ids.length).toBeGreaterThan(0);
    expect(typeof tokenizer.decode(ids)).toBe('string');
    const split = ['龘', '𠀀', '😀', '鬱'].map((c) => tokenizer(c).input_ids).find((x) => x.length > 1)!;
    expect(tokenizer.decode(split.slice(0, 1))).toContain('\uFFFD');
    const dir = fresh('utf8');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'train.jsonl'), Buffer.concat([Buffer.from('{"instruction": "ok '), Buffer.from([0xff, 0xc0, 0x80, 0xed, 0xa0, 0x80]), Buffer.from('"}\n')]));
    const ds = (await load_dataset('json', { data_dir: dir })).train;
    expect(ds.at(0).instruction).toMatch(/^ok \uFFFD+$/);
    const enc = tokenizer(ds.at(0).instruction as string);
    expect(Number.isFinite((await model.forward({ input_ids: [enc.input_ids], labels: [enc.input_ids] })).loss)).toBe(true);
  });

  test("a streamer that throws: generate() rejects with the caller's own error (not ERR_TORCH), decoding stops, the model stays usable", async () => {
    let calls = 0;
    const bug = new TypeError('bug in my streamer');
    const err = await rejection(model.generate({ input_ids: [[5, 6]], max_new_tokens: 20, streamer: () => { calls++; throw bug; } }));
    expect([err, calls]).toEqual([bug, 1]);
    const putBug = new RangeError('bug in put');
    const streamer = { put: () => { throw putBug; }, end: () => undefined };
    expect(await rejection(model.generate({ input_ids: [[5, 6]], max_new_tokens: 3, streamer }))).toBe(putBug);
    const pm = peft(15);
    const tok = tokenizer;
    await expect((async () => { for await (const piece of pm.generate_stream(tok, { input_ids: [[5, 6]], max_new_tokens: 20 })) throw new Error(`consumer ${piece.length}`); })()).rejects.toThrow(/^consumer/);
    expect((await pm.generate({ input_ids: [[5, 6]], max_new_tokens: 2 })).dims).toEqual([1, 4]);
    await pm.dispose();
  });

  test("a tokenizer without a pad token: padding is HF's named error; setting pad_token = eos_token fixes it", async () => {
    const tok = await AutoTokenizer.from_pretrained(TINY);
    tok.pad_token = null;
    const features = [{ input_ids: [5, 6, 7], labels: [5, 6, 7] }, { input_ids: [5], labels: [5] }];
    const message = /Asking to pad but the tokenizer does not have a padding token/;
    await expectCode(() => tok.pad(features.map(({ input_ids }) => ({ input_ids }))), 'ERR_INVALID_INPUT', message);
    await expectCode(() => new DataCollatorForSeq2Seq({ tokenizer: tok, padding: true })(features), 'ERR_INVALID_INPUT', message);
    await expectCode(() => tok(['a', 'bb cc'], { padding: true }), 'ERR_INVALID_INPUT', message);
    tok.pad_token = tok.eos_token;
    const batch = new DataCollatorForSeq2Seq({ tokenizer: tok, padding: true })(features);
    expect(batch.input_ids.dims).toEqual([2, 3]);
  });
});
