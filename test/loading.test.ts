/**
 * Loading checkpoints as transformers does: single file and sharded safetensors, names with or without the
 * `transformer.` prefix, legacy config keys, F16/BF16 converted to the requested dtype, tied lm_head; parameters,
 * state_dict and load_state_dict like torch.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoModelForCausalLM, BloomForCausalLM, Tensor, readSafetensors } from '../lib';
import { FIXTURES, TINY, asNumbers, goldenCases, goldenTensors, maxRelErr, tmpDir } from './helpers';

const [golden] = goldenCases().filter((c) => c.name === 'h4_noproj_mean');
const g = goldenTensors(golden);
const batch = { input_ids: g.get('input_ids')!, attention_mask: g.get('attention_mask')!, labels: g.get('labels')! };
const prefix = g.get('param.prompt_encoder.default.embedding.weight')!;

async function withModel<T>(dir: string, opts: Parameters<typeof AutoModelForCausalLM.from_pretrained>[1], fn: (m: BloomForCausalLM) => Promise<T>): Promise<T> {
  const m = await AutoModelForCausalLM.from_pretrained(dir, opts);
  try {
    return await fn(m);
  } finally {
    await m.dispose();
  }
}

/** bf16 / f16 rounding of float32 values, to predict what a converted checkpoint holds. */
function roundTo(kind: 'bf16' | 'f16', values: Float32Array): Float32Array {
  const out = new Float32Array(values.length);
  if (kind === 'bf16') {
    const u = new Uint32Array(values.buffer.slice(0));
    const o = new Uint32Array(out.buffer);
    for (let i = 0; i < u.length; i++) o[i] = ((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16; // round to nearest even
    return out;
  }
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    const e = Math.floor(Math.log2(Math.abs(v)));
    const q = 2 ** (Math.max(e, -14) - 10);
    const r = v / q;
    const f = Math.floor(r);
    const rounded = r - f > 0.5 || (r - f === 0.5 && f % 2 !== 0) ? f + 1 : f;
    out[i] = v === 0 ? 0 : rounded * q;
  }
  return out;
}

test('tiny-bloom: names, order and count of parameters as transformers lists them', async () => {
  await withModel(TINY, {}, async (m) => {
    const names = m.named_parameters().map(([n]) => n);
    expect(names.slice(0, 5)).toEqual([
      'transformer.word_embeddings.weight',
      'transformer.word_embeddings_layernorm.weight',
      'transformer.word_embeddings_layernorm.bias',
      'transformer.h.0.input_layernorm.weight',
      'transformer.h.0.input_layernorm.bias',
    ]);
    expect(names).toContain('transformer.h.1.mlp.dense_4h_to_h.bias');
    expect(names[names.length - 1]).toBe('transformer.ln_f.bias');
    expect(names).not.toContain('lm_head.weight'); // tied: listed once, like torch's named_parameters
    // PEFT's all-params count minus the 384 trainable prefix values.
    expect(m.num_parameters()).toBe(57920 - 384);
    expect(m.dtype).toBe('float32');
    expect(m.device).toBe('cpu');
    expect(m.training).toBe(false);
  });
});

test.each(['tiny-bloom-sharded', 'tiny-bloom-noprefix'])('%s gives the same logits and gradients as tiny-bloom', async (dir) => {
  const ref = await withModel(TINY, {}, (m) => m.forward(batch, { prefix, backward: true }));
  const out = await withModel(path.join(FIXTURES, dir), {}, (m) => m.forward(batch, { prefix, backward: true }));
  expect(out.loss).toBe(ref.loss);
  expect(maxRelErr(asNumbers(out.logits!), asNumbers(ref.logits!))).toBe(0);
  expect(maxRelErr(asNumbers(out.prefix_grad!), asNumbers(ref.prefix_grad!))).toBe(0);
});

test.each([
  ['tiny-bloom-bf16', 'bfloat16', 'bf16'],
  ['tiny-bloom-f16', 'float16', 'f16'],
] as const)('%s: dtype "auto" keeps %s; float32 holds exactly the stored values', async (dir, dtype, kind) => {
  const full = path.join(FIXTURES, dir);
  const reference = readSafetensors(path.join(TINY, 'model.safetensors')).tensors;
  await withModel(full, {}, async (m) => {
    expect(m.dtype).toBe(dtype);
    const out = await m.forward(batch, { prefix });
    expect(Number.isFinite(out.loss)).toBe(true);
    expect(Math.abs(out.loss! - Number(g.get('loss')!.data[0]))).toBeLessThan(0.1);
  });
  await withModel(full, { torch_dtype: 'float32' }, async (m) => {
    expect(m.dtype).toBe('float32');
    for (const name of ['transformer.word_embeddings.weight', 'transformer.h.1.mlp.dense_h_to_4h.weight', 'transformer.ln_f.bias']) {
      const got = (await m.get_parameter(name)).data as Float32Array;
      const want = roundTo(kind, reference.get(name)!.data as Float32Array);
      expect(maxRelErr(got, want)).toBe(0);
    }
  });
});

test('state_dict / load_state_dict round-trip like torch, with strict key checking', async () => {
  await withModel(TINY, {}, async (m) => {
    const sd = await m.state_dict();
    expect(Object.keys(sd)).toContain('lm_head.weight'); // tied alias present, as in torch's state_dict
    expect(sd['lm_head.weight']).toBe(sd['transformer.word_embeddings.weight']);
    const stored = readSafetensors(path.join(TINY, 'model.safetensors')).tensors;
    expect(maxRelErr(asNumbers(sd['transformer.h.0.self_attention.dense.weight']), asNumbers(stored.get('transformer.h.0.self_attention.dense.weight')!))).toBe(0);

    const before = await m.forward(batch, { prefix });
    const scaled = new Tensor('float32', Float32Array.from(sd['transformer.ln_f.weight'].data as Float32Array, (v) => v * 2), sd['transformer.ln_f.weight'].dims);
    await m.load_state_dict({ ...sd, 'transformer.ln_f.weight': scaled });
    expect(asNumbers(await m.get_parameter('transformer.ln_f.weight'))).toEqual(asNumbers(scaled));
    const after = await m.forward(batch, { prefix });
    expect(after.loss).not.toBe(before.loss);
    await m.load_state_dict(sd);
    expect((await m.forward(batch, { prefix })).loss).toBe(before.loss);

    const { ['transformer.ln_f.bias']: _dropped, ...missing } = sd;
    await expect(m.load_state_dict(missing)).rejects.toMatchObject({ code: 'ERR_WEIGHT_MISSING', message: expect.stringContaining('transformer.ln_f.bias') });
    await expect(m.load_state_dict({ ...sd, 'transformer.extra.weight': scaled })).rejects.toMatchObject({ message: expect.stringContaining('unexpected keys: transformer.extra.weight') });
    expect(await m.load_state_dict({ 'transformer.ln_f.bias': sd['transformer.ln_f.bias'] }, { strict: false })).toMatchObject({ unexpected_keys: [] });
    await expect(m.load_state_dict({ 'transformer.ln_f.bias': new Tensor('float32', new Float32Array(3), [3]) }, { strict: false })).rejects.toMatchObject({ code: 'ERR_SHAPE_MISMATCH' });
  });
});

test('a checkpoint that does not tie lm_head loads its own lm_head.weight', async () => {
  const dir = tmpDir();
  try {
    const config = JSON.parse(fs.readFileSync(path.join(TINY, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, tie_word_embeddings: false }));
    const tensors = readSafetensors(path.join(TINY, 'model.safetensors')).tensors;
    const wte = tensors.get('transformer.word_embeddings.weight')!;
    const head = new Tensor('float32', Float32Array.from(wte.data as Float32Array, (v) => -v), wte.dims);
    const { writeSafetensors } = await import('../lib/utils/safetensors');
    writeSafetensors(path.join(dir, 'model.safetensors'), [...tensors.entries(), ['lm_head.weight', head]], { format: 'pt' });
    await withModel(dir, {}, async (m) => {
      expect(m.named_parameters().map(([n]) => n)).toContain('lm_head.weight');
      const out = await m.forward({ input_ids: [[5, 6, 7]] });
      const tied = await withModel(TINY, {}, (t) => t.forward({ input_ids: [[5, 6, 7]] }));
      // lm_head = -wte flips every logit.
      expect(maxRelErr(asNumbers(out.logits!), asNumbers(tied.logits!).map((v) => -v))).toBeLessThan(1e-6);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
