/**
 * The PEFT API against real PEFT 0.21: PrefixTuningConfig, get_peft_model, print_trainable_parameters, parameter
 * names, seeded initialisation, forward/backward, and adapters that move both ways between Python and peft-node.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AutoModelForCausalLM,
  BloomConfig,
  BloomForCausalLM,
  PeftModel,
  PeftNodeError,
  PrefixTuningConfig,
  TaskType,
  count_prefix_tuning_parameters,
  get_peft_model,
  runtime_info,
  set_num_threads,
  set_seed,
} from '../lib';

import { readSafetensors } from '../lib/utils/safetensors';
import { GOLDEN, GoldenCase, asNumbers, fixtureFidelity, goldenCases, goldenTensors, maxRelErr, seededInitBitExact, tmpDir } from './helpers';
import { FORWARD_REL } from './tolerances';

const defaultThreads = runtime_info().numThreads;
const fidelity = fixtureFidelity(GOLDEN);

// Load with the relative path Python used, so base_model_name_or_path (and thus the saved files) match byte for byte.
const rel = (dir: string) => path.join('test', 'fixtures', dir);
const models = new Map<string, BloomForCausalLM>();
async function model(name: string): Promise<BloomForCausalLM> {
  if (!models.has(name)) models.set(name, await AutoModelForCausalLM.from_pretrained(rel(name)));
  return models.get(name)!;
}
let scratch: string;
beforeAll(() => {
  expect(fs.existsSync(rel('tiny-bloom'))).toBe(true); // jest runs from the repository root
  scratch = tmpDir();
});
afterAll(async () => {
  for (const m of models.values()) await m.dispose();
  fs.rmSync(scratch, { recursive: true, force: true });
});

function configOf(c: GoldenCase): PrefixTuningConfig {
  const pc = c.peft_config as { encoder_hidden_size: number; token_dim: number };
  return new PrefixTuningConfig({
    task_type: TaskType.CAUSAL_LM,
    num_virtual_tokens: c.num_virtual_tokens,
    prefix_projection: c.prefix_projection,
    // only what the Python script passed; get_peft_model fills the rest
    ...(pc.encoder_hidden_size !== pc.token_dim ? { encoder_hidden_size: c.encoder_hidden_size } : {}),
    ...(c.init_weights ? { init_weights: c.init_weights as 'zero' } : {}),
  });
}

function batchOf(c: GoldenCase, g: Map<string, import('../lib').Tensor>) {
  return {
    input_ids: g.get('input_ids')!,
    attention_mask: c.has_mask ? g.get('attention_mask') : undefined,
    labels: c.has_labels ? g.get('labels') : undefined,
    num_items_in_batch: c.num_items_in_batch ?? undefined,
  };
}

describe.each(goldenCases().map((c) => [c.name, c] as const))('%s', (_name, c) => {
  const g = goldenTensors(c);

  test('get_peft_model: filled config, parameter names, print line and seeded init equal PEFT', async () => {
    const m = await model(c.model);
    const config = configOf(c);
    set_seed(c.seed); // torch.manual_seed(seed) before get_peft_model, as the generator did
    const pm = get_peft_model(m, config, c.adapter_name);
    try {
      expect(config.to_dict()).toEqual(c.peft_config);
      expect(pm.named_parameters().map(([n, p]) => [n, p.requires_grad])).toEqual(c.all_param_names);
      const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
      expect(pm.print_trainable_parameters()).toBe(c.print_trainable_parameters);
      expect(log).toHaveBeenCalledWith(c.print_trainable_parameters);
      log.mockRestore();
      // The initial prefix parameters are bit-identical to torch's after the same seed (where ATen has AVX2:
      // seededInitBitExact), within FORWARD_REL elsewhere.
      const initTol = seededInitBitExact(fidelity) ? 0 : FORWARD_REL;
      for (const [name, p] of pm.named_parameters().filter(([, p]) => p.requires_grad))
        expect([name, maxRelErr(asNumbers(await p.data()), asNumbers(g.get(`param.${name}`)!)) <= initTol]).toEqual([name, true]);
    } finally {
      await pm.dispose();
    }
  });

  test('forward/backward through the PEFT model and save_pretrained byte-equal to PEFT', async () => {
    const m = await model(c.model);
    const pm = get_peft_model(m, configOf(c), c.adapter_name);
    try {
      const params = pm.named_parameters().filter(([, p]) => p.requires_grad);
      const enc = await pm.prompt_encoder();
      for (const [name] of params) await enc.set_parameter(name.split(`${c.adapter_name}.`)[1], g.get(`param.${name}`)!);
      pm.train();
      const out = await pm.forward(batchOf(c, g), { backward: c.has_labels });
      const V = g.get('logits')!.dims[2];
      const mask = c.has_mask ? asNumbers(g.get('attention_mask')!) : undefined;
      expect(maxRelErr(asNumbers(out.logits!), asNumbers(g.get('logits')!), mask && ((i) => mask[Math.floor(i / V)] === 1))).toBeLessThanOrEqual(1e-5);
      if (c.has_labels) {
        expect(Math.abs(out.loss! - Number(g.get('loss')!.data[0]))).toBeLessThanOrEqual(1e-5 * Math.abs(out.loss!));
        for (const [name, p] of params) expect(maxRelErr(asNumbers((await p.grad())!), asNumbers(g.get(`grad.${name}`)!))).toBeLessThanOrEqual(1e-5);
      }
      // The files PEFT wrote for these prompt embeddings, byte for byte. The projection MLP runs on one thread here,
      // as the fixtures were made, so on their CPU its output (the saved prefix) has the same bits; elsewhere the
      // config and the safetensors header are byte-equal and the prefix values within FORWARD_REL.
      const out_dir = path.join(scratch, `saved-${c.name}`);
      set_num_threads(1);
      try {
        await pm.save_pretrained(out_dir);
      } finally {
        set_num_threads(defaultThreads);
      }
      const sub = c.adapter_name === 'default' ? '' : c.adapter_name;
      for (const f of ['adapter_config.json', 'adapter_model.safetensors']) {
        const ours = fs.readFileSync(path.join(out_dir, sub, f));
        const theirs = fs.readFileSync(path.join(GOLDEN, c.adapter_dir, sub, f));
        if (fidelity.bitExact || f.endsWith('.json')) {
          expect([f, ours.equals(theirs)]).toEqual([f, true]);
        } else {
          const headerEnd = 8 + Number(theirs.readBigUInt64LE(0));
          expect([f, ours.subarray(0, headerEnd).equals(theirs.subarray(0, headerEnd)), ours.length]).toEqual([f, true, theirs.length]);
          const a = readSafetensors(path.join(out_dir, sub, f)).tensors;
          const b = readSafetensors(path.join(GOLDEN, c.adapter_dir, sub, f)).tensors;
          for (const [name, t] of b) expect([name, maxRelErr(asNumbers(a.get(name)!), asNumbers(t)) <= FORWARD_REL]).toEqual([name, true]);
        }
      }
      expect(fs.readFileSync(path.join(out_dir, 'README.md'), 'utf8')).toContain('library_name: peft');
    } finally {
      await pm.dispose();
    }
  });

  test('the adapter Python saved loads here: logits and print line as PEFT loads it', async () => {
    const m = await model(c.model);
    const dir = path.join(GOLDEN, c.adapter_dir, c.adapter_name === 'default' ? '' : c.adapter_name);
    const loaded = await PeftModel.from_pretrained(m, dir);
    try {
      expect(loaded.training).toBe(false);
      expect(loaded.peft_config.default.inference_mode).toBe(true);
      expect(loaded.named_parameters().map(([n, p]) => [n, p.requires_grad])).toEqual(
        c.loaded_all_param_names.map(([n, r]) => [n.replace(`prompt_encoder.${c.adapter_name}.`, 'prompt_encoder.default.'), r]),
      );
      const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
      expect(loaded.print_trainable_parameters()).toBe(c.loaded_print_trainable_parameters);
      log.mockRestore();
      const out = await loaded.forward({ input_ids: g.get('input_ids')!, attention_mask: c.has_mask ? g.get('attention_mask') : undefined });
      const V = g.get('logits')!.dims[2];
      const mask = c.has_mask ? asNumbers(g.get('attention_mask')!) : undefined;
      expect(maxRelErr(asNumbers(out.logits!), asNumbers(g.get('loaded_logits')!), mask && ((i) => mask[Math.floor(i / V)] === 1))).toBeLessThanOrEqual(1e-5);
    } finally {
      await loaded.dispose();
    }
  });
});

test('an adapter saved here loads back with the same logits, and is_trainable continues training from it', async () => {
  const m = await model('tiny-bloom');
  set_seed(7);
  const pm = get_peft_model(m, new PrefixTuningConfig({ task_type: TaskType.CAUSAL_LM, num_virtual_tokens: 4, prefix_projection: true }));
  const batch = { input_ids: [[20, 21, 22, 23, 24]], labels: [[-100, -100, 22, 23, 24]] };
  const before = await pm.forward(batch);
  const dir = path.join(scratch, 'roundtrip');
  await pm.save_pretrained(dir);
  await pm.dispose();
  const again = await PeftModel.from_pretrained(m, dir);
  const after = await again.forward(batch);
  expect(maxRelErr(asNumbers(after.logits!), asNumbers(before.logits!))).toBeLessThanOrEqual(1e-6);
  await again.dispose();

  const trainable = await PeftModel.from_pretrained(m, dir, { is_trainable: true });
  expect(trainable.peft_config.default.inference_mode).toBe(false);
  expect(trainable.named_parameters().filter(([, p]) => p.requires_grad).map(([n, p]) => [n, p.shape])).toEqual([
    ['prompt_encoder.default.embedding.weight', [4, 128]],
  ]);
  const out = await trainable.forward(batch, { backward: true });
  expect(out.loss).toBeCloseTo(before.loss!, 5);
  const grad = await (await trainable.prompt_encoder()).get_grad('embedding.weight');
  expect(grad).not.toBeNull();
  await trainable.dispose();
});

test('init_weights "zero" zeroes the last layer (PEFT >= 0.19): the prefix starts as exact zeros', async () => {
  const m = await model('tiny-bloom');
  for (const prefix_projection of [false, true]) {
    const pm = get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2, prefix_projection, init_weights: 'zero' }));
    const emb = asNumbers(await pm.get_prompt_embedding_to_save());
    expect(emb.every((v) => v === 0)).toBe(true);
    await pm.dispose();
  }
});

test('bloom-1b4-zh parameter counts from config.json values alone (no weights)', () => {
  const config = new BloomConfig({ model_type: 'bloom', vocab_size: 46145, hidden_size: 2048, n_layer: 24, n_head: 16 });
  const fmt = ([t, a]: [number, number]) => `trainable params: ${t.toLocaleString('en-US')} || all params: ${a.toLocaleString('en-US')}`;
  expect(fmt(count_prefix_tuning_parameters(config, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 10 })))).toBe(
    'trainable params: 983,040 || all params: 1,304,094,720',
  );
  expect(fmt(count_prefix_tuning_parameters(config, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 10, prefix_projection: true })))).toBe(
    'trainable params: 205,641,728 || all params: 1,508,753,408',
  );
  const { format_trainable_parameters } = jest.requireActual('../lib') as typeof import('../lib');
  expect(format_trainable_parameters(983040, 1304094720)).toBe('trainable params: 983,040 || all params: 1,304,094,720 || trainable%: 0.0754');
  expect(format_trainable_parameters(205641728, 1508753408)).toBe('trainable params: 205,641,728 || all params: 1,508,753,408 || trainable%: 13.6299');
  // Python rounds the tie 0.03125 to even: "0.0312" (JavaScript's toFixed would say "0.0313").
  expect(format_trainable_parameters(1, 3200)).toBe('trainable params: 1 || all params: 3,200 || trainable%: 0.0312');
});

describe('PrefixTuningConfig', () => {
  test('every PEFT 0.21 field with its default; to_dict, save_pretrained and from_pretrained round-trip', () => {
    const c = new PrefixTuningConfig({ task_type: TaskType.CAUSAL_LM, num_virtual_tokens: 10 });
    expect(c.to_dict()).toEqual({
      task_type: 'CAUSAL_LM', peft_type: 'PREFIX_TUNING', auto_mapping: null, peft_version: '0.21.0',
      base_model_name_or_path: null, revision: null, inference_mode: false, num_virtual_tokens: 10, token_dim: null,
      num_transformer_submodules: null, num_attention_heads: null, num_layers: null, modules_to_save: null,
      init_weights: null, encoder_hidden_size: null, prefix_projection: false,
    });
    const dir = path.join(scratch, 'config-only');
    c.save_pretrained(dir);
    const text = fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8');
    expect(text.startsWith('{\n  "auto_mapping": null,\n  "base_model_name_or_path": null,')).toBe(true);
    expect(text.endsWith('}')).toBe(true); // no trailing newline, as json.dumps
    expect(PrefixTuningConfig.from_pretrained(dir).to_dict()).toEqual(c.to_dict());
  });

  test.each([
    [{ task_type: 'CAUSAL_LMX' }, 'ERR_CONFIG', "invalid task_type 'CAUSAL_LMX'; valid task types: SEQ_CLS, SEQ_2_SEQ_LM, CAUSAL_LM"],
    [{ num_virtual_tokens: 0 }, 'ERR_CONFIG', 'num_virtual_tokens must be a positive integer, got 0'],
    [{ num_virtual_tokens: 2.5 }, 'ERR_CONFIG', 'num_virtual_tokens must be a positive integer, got 2.5'],
    [{ num_virtual_tokens: '10' }, 'ERR_CONFIG', 'num_virtual_tokens must be a positive integer, got "10"'],
    [{ num_virtual_token: 10 }, 'ERR_CONFIG', "unknown option 'num_virtual_token' (did you mean 'num_virtual_tokens'?)"],
    [{ prefix_projection: 'yes' }, 'ERR_CONFIG', 'prefix_projection must be a boolean'],
    [{ init_weights: 'gaussian' }, 'ERR_CONFIG', 'init_weights must be null or "zero"'],
    [{ peft_type: 'LORA' }, 'ERR_CONFIG', "peft_type must be PREFIX_TUNING, got 'LORA'"],
  ])('%j is refused', (options, code, message) => {
    let err: unknown;
    try {
      new PrefixTuningConfig(options as never);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PeftNodeError);
    expect(err).toMatchObject({ code });
    expect((err as Error).message).toContain(message);
  });

  test('get_peft_model refuses a token_dim or num_layers that contradicts the model, and a missing num_virtual_tokens', async () => {
    const m = await model('tiny-bloom');
    expect(() => get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2, token_dim: 64 }))).toThrow(
      'token_dim is 64, but the model has hidden_size = 32',
    );
    expect(() => get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2, num_layers: 3 }))).toThrow(
      'num_layers is 3, but the model has n_layer = 2',
    );
    expect(() => get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM' }))).toThrow('num_virtual_tokens must be set');
    expect(() => get_peft_model(m, new PrefixTuningConfig({ num_virtual_tokens: 2 }))).toThrow('task_type must be TaskType.CAUSAL_LM');
  });
});

describe('PeftModel.from_pretrained errors', () => {
  const write = (name: string, files: Record<string, string | Buffer>) => {
    const d = path.join(scratch, name);
    fs.mkdirSync(d, { recursive: true });
    for (const [f, v] of Object.entries(files)) fs.writeFileSync(path.join(d, f), v);
    return d;
  };
  const golden = (f: string) => fs.readFileSync(path.join(GOLDEN, 'h4_noproj_mean.adapter', f));

  test('missing files are named', async () => {
    const m = await model('tiny-bloom');
    await expect(PeftModel.from_pretrained(m, write('empty-adapter', {}))).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND', message: expect.stringContaining('adapter_config.json') });
    const d = write('no-weights', { 'adapter_config.json': golden('adapter_config.json') });
    await expect(PeftModel.from_pretrained(m, d)).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND', message: expect.stringContaining('adapter_model.safetensors') });
  });

  test('a LoRA adapter is refused, naming its type', async () => {
    const m = await model('tiny-bloom');
    const d = write('lora', { 'adapter_config.json': JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 8 }) });
    await expect(PeftModel.from_pretrained(m, d)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED_ADAPTER', message: expect.stringContaining('LORA adapter') });
  });

  test('an adapter for another model shape: expected vs found', async () => {
    const m = await model('tiny-bloom-6h');
    await expect(PeftModel.from_pretrained(m, path.join(GOLDEN, 'h4_noproj_mean.adapter'))).rejects.toMatchObject({
      code: 'ERR_SHAPE_MISMATCH',
      message: expect.stringContaining('token_dim = 32, but the base model has hidden_size = 48'),
    });
    const cfg = JSON.parse(golden('adapter_config.json').toString());
    const d = write('bad-shape', { 'adapter_config.json': JSON.stringify({ ...cfg, num_virtual_tokens: 5 }), 'adapter_model.safetensors': golden('adapter_model.safetensors') });
    await expect(PeftModel.from_pretrained(await model('tiny-bloom'), d)).rejects.toMatchObject({ code: 'ERR_SHAPE_MISMATCH', message: expect.stringContaining('[3,128], expected [5,128]') });
  });

  test('another base model name only warns', async () => {
    const m = await model('tiny-bloom-sharded');
    const warn = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    const loaded = await PeftModel.from_pretrained(m, path.join(GOLDEN, 'h4_noproj_mean.adapter'));
    expect(String(warn.mock.calls[0]?.[0])).toContain("trained on 'test/fixtures/tiny-bloom', loading it onto 'test/fixtures/tiny-bloom-sharded'");
    warn.mockRestore();
    await loaded.dispose();
  });
});

test('save_pretrained into an existing directory keeps its other files; a failed save leaves nothing', async () => {
  const m = await model('tiny-bloom');
  const pm = get_peft_model(m, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 }));
  const dir = path.join(scratch, 'existing');
  fs.mkdirSync(path.join(dir, 'checkpoint-1'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'mine');
  await pm.save_pretrained(dir);
  expect(fs.readdirSync(dir).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'checkpoint-1', 'notes.txt']);
  const failed = path.join(scratch, 'never');
  await expect(pm.save_pretrained(failed, { selected_adapters: ['nope'] })).rejects.toThrow("no adapter named 'nope'");
  expect(fs.existsSync(failed)).toBe(false);
  expect(fs.readdirSync(scratch).filter((f) => f.includes('.tmp-'))).toEqual([]);
  await pm.dispose();
});
