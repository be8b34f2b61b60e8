/**
 * generate() against PEFT 0.21's generate (greedy ids; batch 1 and a left-padded batch 2; initial, trained and
 * Python-saved prefixes; eos stopping one row), the KV cache against a full recompute, seeded sampling, streaming.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AttnImplementation,
  AutoModelForCausalLM,
  AutoTokenizer,
  BloomForCausalLM,
  PeftModel,
  PeftModelForCausalLM,
  PrefixTuningConfig,
  Tensor,
  TextStreamer,
  get_peft_model,
} from '../lib';
import { readSafetensors } from '../lib/utils/safetensors';
import { FIXTURES, GOLDEN, asNumbers, goldenCases, goldenTensors, maxRelErr } from './helpers';

interface GenCase {
  name: string;
  case: string;
  prefix: 'init' | 'trained' | 'loaded';
  input_ids: number[][];
  attention_mask: number[][] | null;
  max_new_tokens: number;
  eos_token_id: number;
  pad_token_id: number;
  sequences: number[][];
}
const genCases: GenCase[] = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'generation.json'), 'utf8'));
const trained = readSafetensors(path.join(GOLDEN, 'generation_trained.safetensors')).tensors;
const models = new Map<string, BloomForCausalLM>();
async function model(name: string, attn_implementation: AttnImplementation = 'eager') {
  const key = `${name}:${attn_implementation}`;
  if (!models.has(key)) models.set(key, await AutoModelForCausalLM.from_pretrained(path.join(FIXTURES, name), { attn_implementation }));
  return models.get(key)!;
}
afterAll(async () => {
  for (const m of models.values()) await m.dispose();
});

/** The PEFT model of a golden case, with the prefix parameters the generator used. */
async function peftModel(gc: GenCase, attn_implementation: AttnImplementation = 'eager'): Promise<PeftModelForCausalLM> {
  const c = goldenCases().find((x) => x.name === gc.case)!;
  const m = await model(c.model, attn_implementation);
  if (gc.prefix === 'loaded') return PeftModel.from_pretrained(m, path.join(GOLDEN, c.adapter_dir));
  const pm = get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: c.num_virtual_tokens, prefix_projection: c.prefix_projection, encoder_hidden_size: c.encoder_hidden_size }));
  const g = goldenTensors(c);
  const enc = await pm.prompt_encoder();
  for (const [n] of enc.parameter_shapes())
    await enc.set_parameter(n, gc.prefix === 'trained' ? trained.get(`prompt_encoder.default.${n}`)! : g.get(`param.prompt_encoder.default.${n}`)!);
  return pm.eval();
}

// 'sdpa' decodes through the fused kernel (other rounding): the argmax is still PEFT's on these cases.
test.each(genCases.flatMap((g) => (['eager', 'sdpa'] as const).map((a) => [g.name, a, g] as const)))('greedy ids equal PEFT: %s (%s attention)', async (_n, attn, gc) => {
  const pm = await peftModel(gc, attn);
  const out = await pm.generate({
    input_ids: gc.input_ids,
    attention_mask: gc.attention_mask ?? undefined,
    max_new_tokens: gc.max_new_tokens,
    eos_token_id: gc.eos_token_id,
    pad_token_id: gc.pad_token_id,
  });
  expect(out.type).toBe('int64');
  expect(out.tolist()).toEqual(gc.sequences);
  await pm.dispose();
});

test('the KV cache gives the logits of a full recompute (within 1e-5)', async () => {
  const gc = genCases.find((g) => g.name === 'h4_proj_sum_init_b2')!;
  const pm = await peftModel(gc);
  const T = gc.input_ids[0].length;
  const out = await pm.generate({ input_ids: gc.input_ids, attention_mask: gc.attention_mask!, max_new_tokens: 6, return_dict_in_generate: true, output_scores: true });
  expect(out.scores).toHaveLength(6);
  const seq = out.sequences.tolist() as number[][];
  for (let k = 0; k < 6; k++) {
    const ids = seq.map((r) => r.slice(0, T + k));
    const mask = gc.attention_mask!.map((r) => [...r, ...new Array(k).fill(1)]);
    const full = await pm.forward({ input_ids: ids, attention_mask: mask });
    const V = full.logits!.dims[2];
    const L = T + k;
    const last = new Float32Array(2 * V);
    for (let b = 0; b < 2; b++) last.set((full.logits!.data as Float32Array).subarray((b * L + L - 1) * V, (b * L + L) * V), b * V);
    expect(maxRelErr(asNumbers(out.scores![k]), asNumbers(last))).toBeLessThanOrEqual(1e-5);
  }
  await pm.dispose();
});

test('sampling is reproducible with a seed; temperature, top_k, top_p and repetition_penalty apply', async () => {
  const gc = genCases.find((g) => g.name === 'h4_noproj_mean_init_b2')!;
  const pm = await peftModel(gc);
  const opts = { input_ids: gc.input_ids, attention_mask: gc.attention_mask!, max_new_tokens: 12, do_sample: true, temperature: 1.5, top_k: 40, top_p: 0.9, repetition_penalty: 1.2 };
  const a = (await pm.generate({ ...opts, seed: 7 })).tolist();
  const b = (await pm.generate({ ...opts, seed: 7 })).tolist();
  const c = (await pm.generate({ ...opts, seed: 8 })).tolist();
  expect(a).toEqual(b);
  expect(c).not.toEqual(a);
  // top_k 1 is greedy whatever the seed.
  const greedy = (await pm.generate({ ...opts, do_sample: false, repetition_penalty: 1, max_new_tokens: 5 })).tolist();
  const k1 = (await pm.generate({ ...opts, top_k: 1, repetition_penalty: 1, max_new_tokens: 5, seed: 3 })).tolist();
  expect(k1).toEqual(greedy);
  await pm.dispose();
});

test('streaming: the streamer sees every step, text pieces never split a character and join to the decoded text', async () => {
  const tokenizer = await AutoTokenizer.from_pretrained(path.join(FIXTURES, 'tokenizer'));
  const gc = genCases.find((g) => g.name === 'h4_proj_sum_trained_b1')!;
  const pm = await peftModel(gc);
  const steps: number[][] = [];
  const seq = await pm.generate({ input_ids: gc.input_ids, max_new_tokens: 10, streamer: (t) => void steps.push(t) });
  const T = gc.input_ids[0].length;
  const newIds = (seq.tolist() as number[][])[0].slice(T);
  expect(steps.map((s) => s[0])).toEqual(newIds);

  const pieces: string[] = [];
  const streamer = new TextStreamer(tokenizer, { skip_prompt: true, on_text: (t) => pieces.push(t) });
  await pm.generate({ input_ids: gc.input_ids, max_new_tokens: 10, streamer });
  expect(pieces.join('')).toBe(tokenizer.decode(newIds));
  expect(pieces.some((p) => p.includes('\ufffd'))).toBe(false);

  const streamed: string[] = [];
  for await (const piece of pm.generate_stream(tokenizer, { input_ids: gc.input_ids, max_new_tokens: 10 })) streamed.push(piece);
  expect(streamed.join('')).toBe(tokenizer.decode(newIds, { skip_special_tokens: true }));

  // A streamer returning false stops the decode after that step.
  let n = 0;
  const stopped = await pm.generate({ input_ids: gc.input_ids, max_new_tokens: 10, streamer: () => ++n < 3 });
  expect(stopped.dims[1]).toBe(T + 3);
  await pm.dispose();
});

test('TextStreamer holds back an incomplete UTF-8 sequence (a byte-level token can end mid-character)', () => {
  // A fake tokenizer whose tokens are single bytes of "月亮" (two 3-byte characters).
  const bytes = [...Buffer.from('月亮', 'utf8')];
  const fake = { decode: (ids: number[]) => Buffer.from(ids.map((i) => bytes[i])).toString('utf8') };
  const pieces: string[] = [];
  const s = new TextStreamer(fake, { skip_prompt: true, on_text: (t) => pieces.push(t) });
  s.put([]);
  for (let i = 0; i < bytes.length; i++) s.put([i]);
  s.end();
  expect(pieces.filter((p) => p)).toEqual(['月', '亮']);
});

test('plain BloomForCausalLM.generate with max_length, and generation_config.json defaults', async () => {
  const m = await model('tiny-bloom');
  expect(m.generation_config).toMatchObject({ eos_token_id: 2, pad_token_id: 3, bos_token_id: 1, max_length: 20 });
  const out = await m.generate({ input_ids: [[272, 868, 390]] });
  expect(out.dims).toEqual([1, 20]); // max_length 20 counts the prompt
  const out2 = await m.generate({ input_ids: [[272, 868, 390]], max_length: 5 });
  expect(out2.dims).toEqual([1, 5]);
  await expect(m.generate({ input_ids: [[272, 868, 390]], max_length: 2 })).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT' });
  await expect(m.generate({ input_ids: [[272, 868]], do_sample: true, temperature: 0 })).rejects.toThrow('temperature must be > 0');
  expect(out2 instanceof Tensor).toBe(true);
});

test('process.exit() from a streamer during a decode exits promptly (the decode does not wait for a dead JS thread)', async () => {
  const { spawnSync } = await import('node:child_process');
  const script = `
    const p = require(${JSON.stringify(path.resolve(__dirname, '..', 'dist'))});
    (async () => {
      const m = await p.AutoModelForCausalLM.from_pretrained(${JSON.stringify(path.join(FIXTURES, 'tiny-bloom'))});
      let n = 0;
      m.generate({ input_ids: [[5, 6, 7]], max_new_tokens: 500, eos_token_id: [], streamer: () => { if (++n === 3) process.exit(7); } });
    })();`;
  const r = spawnSync(process.execPath, ['-e', script], { timeout: 30000 });
  expect(r.status).toBe(7);
});

test('generate() sees weights written by load_state_dict (no stale decode caches)', async () => {
  const m = await AutoModelForCausalLM.from_pretrained(path.join(FIXTURES, 'tiny-bloom'));
  const ids = [[272, 868, 390, 248]];
  await m.generate({ input_ids: ids, max_new_tokens: 2 }); // builds the decode caches
  const wte = await m.get_parameter('transformer.word_embeddings.weight');
  const scaled = new Tensor('float32', Float32Array.from(wte.data as Float32Array, (v, i) => v * (1 + (i % 7) / 10)), wte.dims);
  await m.load_state_dict({ 'transformer.word_embeddings.weight': scaled }, { strict: false });
  const out = await m.generate({ input_ids: ids, max_new_tokens: 1, return_dict_in_generate: true, output_scores: true });
  const full = await m.forward({ input_ids: ids });
  const V = full.logits!.dims[2];
  const last = (full.logits!.data as Float32Array).subarray(3 * V, 4 * V);
  expect(maxRelErr(asNumbers(out.scores![0]), asNumbers(last))).toBeLessThanOrEqual(1e-5);
  await m.dispose();
});
