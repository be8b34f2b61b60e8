'use strict';
/**
 * Fuzz targets: each builds a directory of mutated files from the templates (`build`, a pure function of the case's
 * seed) and then drives peft-node's public API over it the way a user would (`exercise`): load, then use what loaded
 * (forward + backward, generate, tokenize, collate, train from a checkpoint). Anything may fail, but only with a
 * PeftNodeError carrying a documented code; what loads must also be self-consistent (the invariants below).
 */
const fs = require('node:fs');
const path = require('node:path');
const M = require('./mutate');

/** Target name → relative weight in a run (how often it is picked). */
const WEIGHTS = {
  safetensors: 28,
  config: 12,
  generation_config: 4,
  sharded: 5,
  tokenizer: 15,
  adapter: 14,
  dataset: 13,
  checkpoint: 9,
  bin: 14,
  api: 14,
};

/** pytorch_model.bin templates (test/fixtures/bin, made by torch.save): a model, a plain dict, strided views. */
const BIN_TEMPLATES = ['f32', 'f16', 'dtypes', 'dtypes-protocol4'];

/** The target of case `id`: a deterministic weighted pick. */
function targetOf(seed, id, allowed) {
  const r = M.rng(M.caseSeed(seed ^ 0x5eed, id));
  return r.weighted(allowed.map((t) => [WEIGHTS[t], t]));
}

// ---------------------------------------------------------------------------------------------------------------
// Templates (written once per run by `setup`, read by every worker)

const DATA_ROWS = [
  { instruction: '你好', input: '', output: '你好！有什么可以帮你的吗？' },
  { instruction: 'Translate to English', input: '早上好', output: 'Good morning' },
  { instruction: 'Say hi', input: 'politely', output: 'Hello, nice to meet you.' },
  { instruction: '考试有哪些技巧？', input: '', output: '多练习，注意时间。' },
  { instruction: 'Count to three', input: '', output: '1, 2, 3' },
  { instruction: 'Emoji', input: '😀', output: '🙂 ok' },
];

const CKPT = { num_virtual_tokens: 3, prefix_projection: true, encoder_hidden_size: 8, step: 2 };

/** Writes the templates into `dir` with the compiled package `P`. Deterministic (seeded, one thread). */
async function setup(P, dir, assets) {
  P.set_num_threads(1);
  const model = path.join(dir, 'model');
  fs.mkdirSync(model, { recursive: true });
  for (const f of ['config.json', 'model.safetensors', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'])
    fs.copyFileSync(path.join(assets, f), path.join(model, f));
  // Two shards + index, as transformers writes them.
  const { tensors } = P.readSafetensors(path.join(model, 'model.safetensors'));
  const entries = [...tensors.entries()];
  const half = Math.ceil(entries.length / 2);
  const sharded = path.join(dir, 'sharded');
  fs.mkdirSync(sharded, { recursive: true });
  fs.copyFileSync(path.join(model, 'config.json'), path.join(sharded, 'config.json'));
  const weight_map = {};
  [entries.slice(0, half), entries.slice(half)].forEach((part, i) => {
    const name = `model-0000${i + 1}-of-00002.safetensors`;
    P.writeSafetensors(path.join(sharded, name), part, { format: 'pt' });
    for (const [n] of part) weight_map[n] = name;
  });
  fs.writeFileSync(path.join(sharded, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map }, null, 2));

  const base = await P.AutoModelForCausalLM.from_pretrained(model);
  P.set_seed(0);
  const pm = P.get_peft_model(base, new P.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 3 }));
  await pm.save_pretrained(path.join(dir, 'adapter'));
  await pm.dispose();

  const out = path.join(dir, 'train-out');
  P.set_seed(0);
  const pm2 = P.get_peft_model(base, new P.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: CKPT.num_virtual_tokens, prefix_projection: CKPT.prefix_projection, encoder_hidden_size: CKPT.encoder_hidden_size }));
  const log = console.log;
  console.log = () => undefined;
  try {
    await new P.Trainer({ model: pm2, args: trainArgs(P, out, CKPT.step), train_dataset: trainRows(), data_collator: pad }).train({ handle_sigint: false });
  } finally {
    console.log = log;
  }
  fs.renameSync(path.join(out, `checkpoint-${CKPT.step}`), path.join(dir, 'checkpoint'));
  fs.rmSync(out, { recursive: true, force: true });
  await pm2.dispose();
  await base.dispose();

  const binFixtures = path.join(assets, '..', '..', 'test', 'fixtures', 'bin');
  for (const name of BIN_TEMPLATES) {
    const from = path.join(binFixtures, name);
    if (!fs.existsSync(path.join(from, 'pytorch_model.bin'))) continue;
    fs.mkdirSync(path.join(dir, 'bin', name), { recursive: true });
    for (const f of ['config.json', 'pytorch_model.bin']) if (fs.existsSync(path.join(from, f))) fs.copyFileSync(path.join(from, f), path.join(dir, 'bin', name, f));
  }

  fs.mkdirSync(path.join(dir, 'dataset'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'dataset', 'train.json'), JSON.stringify(DATA_ROWS, null, 2));
  fs.writeFileSync(path.join(dir, 'dataset', 'train.jsonl'), DATA_ROWS.map((r) => JSON.stringify(r)).join('\n') + '\n');
}

function trainArgs(P, output_dir, max_steps, extra = {}) {
  return new P.TrainingArguments({
    output_dir, per_device_train_batch_size: 2, max_steps, learning_rate: 1e-2, logging_steps: 1, save_steps: max_steps,
    disable_tqdm: true, report_to: 'none', ...extra,
  });
}

function trainRows() {
  return Array.from({ length: 6 }, (_, i) => {
    const ids = Array.from({ length: 4 + (i % 3) }, (_, j) => 20 + ((i * 37 + j * 11) % 900));
    return { input_ids: ids, attention_mask: ids.map(() => 1), labels: ids.map((v, j) => (j < 1 ? -100 : v)) };
  });
}

function pad(features) {
  const T = Math.max(...features.map((f) => f.input_ids.length));
  const left = (a, v) => [...Array(T - a.length).fill(v), ...a];
  return {
    input_ids: features.map((f) => left(f.input_ids, 3)),
    attention_mask: features.map((f) => left(f.attention_mask, 0)),
    labels: features.map((f) => left(f.labels, -100)),
  };
}

/** Reads every template file into memory (workers mutate copies). */
function loadTemplates(dir) {
  const read = (sub) => Object.fromEntries(fs.readdirSync(path.join(dir, sub)).map((f) => [f, fs.readFileSync(path.join(dir, sub, f))]));
  const binDir = path.join(dir, 'bin');
  const bin = fs.existsSync(binDir) ? Object.fromEntries(fs.readdirSync(binDir).sort().map((n) => [n, read(path.join('bin', n))])) : {};
  return { dir, model: read('model'), sharded: read('sharded'), adapter: read('adapter'), checkpoint: read('checkpoint'), dataset: read('dataset'), bin };
}

// ---------------------------------------------------------------------------------------------------------------
// Building case directories

function writeFiles(dir, files) {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, bytes] of Object.entries(files)) if (bytes !== null) fs.writeFileSync(path.join(dir, name), bytes);
}

const parse = (buf) => JSON.parse(buf.toString('utf8'));

/** A JSON file mutated at the JSON level (most of the time) or the byte level. */
function mutatedJsonFile(r, buf, opts = {}) {
  if (r.chance(opts.byteLevel ?? 0.25)) return M.mutateBytes(r, buf);
  return M.jsonBytes(r, M.mutateJson(r, parse(buf), opts), { indent: opts.indent });
}

const CONFIG_KEYS = ['vocab_size', 'hidden_size', 'n_layer', 'n_head', 'n_embed', 'num_hidden_layers', 'num_attention_heads', 'layer_norm_epsilon',
  'tie_word_embeddings', 'model_type', 'dtype', 'torch_dtype', 'apply_residual_connection_post_layernorm', 'bos_token_id', 'eos_token_id',
  'pad_token_id', 'hidden_dropout', 'attention_dropout'].map((k) => [k]);

const builders = {
  safetensors(r, T, dir) {
    writeFiles(dir, { ...T.model, 'model.safetensors': M.mutateSafetensors(r, T.model['model.safetensors']) });
    return { kind: 'model', dir };
  },
  config(r, T, dir) {
    writeFiles(dir, { ...T.model, 'config.json': mutatedJsonFile(r, T.model['config.json'], { focus: CONFIG_KEYS, indent: 2 }) });
    return { kind: 'model', dir };
  },
  generation_config(r, T, dir) {
    const focus = ['max_length', 'max_new_tokens', 'do_sample', 'temperature', 'top_k', 'top_p', 'repetition_penalty', 'eos_token_id', 'pad_token_id', 'bos_token_id'].map((k) => [k]);
    writeFiles(dir, { ...T.model, 'generation_config.json': mutatedJsonFile(r, T.model['generation_config.json'], { focus }) });
    return { kind: 'model', dir, generateWithDefaults: true };
  },
  sharded(r, T, dir) {
    const files = { ...T.sharded };
    const names = Object.keys(files).filter((f) => f.endsWith('.safetensors'));
    if (r.chance(0.5)) {
      const weight_map = Object.entries(parse(files['model.safetensors.index.json']).weight_map).map(([k]) => ['weight_map', k]);
      files['model.safetensors.index.json'] = mutatedJsonFile(r, files['model.safetensors.index.json'], {
        focus: [...weight_map, ['weight_map'], ['metadata']],
      });
      if (r.chance(0.1)) {
        // Shard names that try to leave the directory.
        const idx = parse(T.sharded['model.safetensors.index.json']);
        const k = r.pick(Object.keys(idx.weight_map));
        idx.weight_map[k] = r.pick(['../model/model.safetensors', '/etc/passwd', '..', '', '.', 'model-00001-of-00002.safetensors/', 'sub/x.safetensors', '\u0000']);
        files['model.safetensors.index.json'] = Buffer.from(JSON.stringify(idx));
      }
    } else {
      const n = r.pick(names);
      files[n] = r.chance(0.1) ? null : M.mutateSafetensors(r, files[n]);
    }
    writeFiles(dir, files);
    return { kind: 'model', dir };
  },
  tokenizer(r, T, dir) {
    const files = { ...T.model };
    delete files['model.safetensors'];
    const which = r.weighted([[7, 'tokenizer.json'], [2, 'tokenizer_config.json'], [1, 'special_tokens_map.json']]);
    const skipVocab = (p) => p[0] === 'model' && (p[1] === 'vocab' || p[1] === 'merges') && p.length >= 2;
    if (which === 'tokenizer.json') {
      const tj = parse(files['tokenizer.json']);
      const structural = M.jsonPaths(tj, { skip: skipVocab }).filter((p) => !(p[0] === 'model' && (p[1] === 'vocab' || p[1] === 'merges') && p.length > 2));
      const vocabSamples = Object.keys(tj.model?.vocab ?? {}).slice(0, 300).map((k) => ['model', 'vocab', k]);
      const mergeSamples = (tj.model?.merges ?? []).slice(0, 100).map((_, i) => ['model', 'merges', i]);
      const focus = [...structural, ...vocabSamples, ...mergeSamples];
      files['tokenizer.json'] = r.chance(0.15) ? M.mutateBytes(r, files['tokenizer.json']) : M.jsonBytes(r, M.mutateJson(r, tj, { focus, skip: skipVocab }), { textDamage: 0.05 });
    } else {
      files[which] = mutatedJsonFile(r, files[which], { focus: ['pad_token', 'eos_token', 'bos_token', 'unk_token', 'padding_side', 'truncation_side', 'model_max_length', 'additional_special_tokens', 'clean_up_tokenization_spaces', 'extra_special_tokens'].map((k) => [k]) });
    }
    if (r.chance(0.05)) files[r.pick(['tokenizer_config.json', 'special_tokens_map.json'])] = null;
    writeFiles(dir, files);
    return { kind: 'tokenizer', dir };
  },
  adapter(r, T, dir) {
    const files = { ...T.adapter };
    const which = r.weighted([[5, 'config'], [5, 'weights'], [1, 'both']]);
    if (which !== 'weights')
      files['adapter_config.json'] = mutatedJsonFile(r, files['adapter_config.json'], {
        focus: ['num_virtual_tokens', 'token_dim', 'num_layers', 'num_attention_heads', 'peft_type', 'task_type', 'prefix_projection', 'encoder_hidden_size',
          'inference_mode', 'base_model_name_or_path', 'num_transformer_submodules', 'init_weights', 'modules_to_save', 'peft_version'].map((k) => [k]),
        indent: 2,
      });
    if (which !== 'config') files['adapter_model.safetensors'] = M.mutateSafetensors(r, files['adapter_model.safetensors']);
    if (r.chance(0.03)) files[r.pick(['adapter_config.json', 'adapter_model.safetensors'])] = null;
    writeFiles(dir, files);
    return { kind: 'adapter', dir, is_trainable: r.chance(0.3) };
  },
  dataset(r, T, dir) {
    const jsonl = r.chance(0.4);
    const name = jsonl ? 'train.jsonl' : 'train.json';
    const template = T.dataset[name];
    let bytes;
    const how = r.weighted([[5, 'json'], [3, 'bytes'], [2, 'special']]);
    if (how === 'json' && !jsonl) bytes = M.jsonBytes(r, M.mutateJson(r, parse(template), { count: r.range(1, 4) }), { indent: 2, textDamage: 0.1 });
    else if (how === 'json') {
      const lines = template.toString('utf8').trimEnd().split('\n');
      const i = r.int(lines.length);
      lines[i] = M.mutateJson(r, JSON.parse(lines[i])).stringify();
      bytes = Buffer.from(lines.join(r.pick(['\n', '\r\n', '\n\n'])) + '\n');
    } else if (how === 'bytes') bytes = M.mutateBytes(r, template);
    else
      bytes = Buffer.from(r.pick([
        '', '[]', '{}', 'null', '[null]', '[1, 2]', '["a", "b"]', '["a", {"instruction": "x"}]', '{"data": [{"instruction": "x"}]}',
        '[{}]', '[{"instruction": null, "input": null, "output": null}]', '\n\n\n', '[{"instruction": "' + 'a'.repeat(20000) + '"}]',
        '{"instruction": "x"}\n[1]\n', '[' + '['.repeat(100000) + ']'.repeat(100000) + ']', '{"a":' + '{"a":'.repeat(50000) + '1' + '}'.repeat(50001),
        '[{"instruction": "x", "__proto__": {"polluted": 1}}]', '[{"constructor": 1, "toString": 2, "instruction": "y"}]',
        '[{"instruction": "\\ud800", "output": "\\udfff"}]', '[{"instruction": ["a", 1, null], "output": {"x": [1]}}]',
      ]));
    const files = { [name]: bytes };
    if (r.chance(0.15)) files[r.pick(['test.json', 'train-2.json', 'data.jsonl'])] = Buffer.from(JSON.stringify([{ instruction: 'x', other: 1 }]));
    writeFiles(dir, files);
    return { kind: 'dataset', dir };
  },
  bin(r, T, dir) {
    const names = Object.keys(T.bin);
    if (!names.length) throw new Error('fuzz: no pytorch_model.bin templates (test/fixtures/bin): run with --targets excluding bin');
    const t = T.bin[r.pick(names)];
    writeFiles(dir, { 'config.json': t['config.json'] ?? T.model['config.json'], 'pytorch_model.bin': M.mutateTorchZip(r, t['pytorch_model.bin']) });
    return { kind: 'model', dir };
  },
  api(r, T, dir) {
    // No files: a public call with one or more argument fields replaced by garbage (see API_CALLS).
    fs.mkdirSync(dir, { recursive: true });
    const name = r.pick(Object.keys(API_CALLS));
    const args = structuredClone(API_CALLS[name]);
    const paths = [];
    const walk = (v, p) => {
      if (p.length) paths.push(p);
      if (Array.isArray(v)) v.forEach((x, i) => walk(x, [...p, i]));
      else if (v && typeof v === 'object') for (const k of Object.keys(v)) walk(v[k], [...p, k]);
    };
    walk(args, []);
    const n = r.range(1, 2);
    const edits = [];
    for (let k = 0; k < n; k++) {
      const p = r.pick(paths);
      const field = String(p.findLast((x) => typeof x === 'string') ?? '');
      edits.push([p, apiValue(r, field)]);
    }
    return { kind: 'api', dir, name, args, edits, extraKey: r.chance(0.05) };
  },
  checkpoint(r, T, dir) {
    const files = { ...T.checkpoint };
    const n = r.range(1, 2);
    for (let k = 0; k < n; k++) {
      const which = r.weighted([[4, 'trainer_state.json'], [3, 'resume_state.json'], [4, 'trainable_state.safetensors'], [4, 'optimizer.safetensors'],
        [1, 'adapter_config.json'], [1, 'training_args.json'], [1, 'delete']]);
      if (which === 'delete') files[r.pick(Object.keys(files))] = null;
      else if (files[which] !== T.checkpoint[which]) continue; // already mutated or deleted
      else if (which.endsWith('.safetensors')) files[which] = M.mutateSafetensors(r, files[which]);
      else
        files[which] = mutatedJsonFile(r, files[which], {
          focus: ['global_step', 'epoch', 'max_steps', 'log_history', 'logging_steps', 'save_steps', 'tr_loss', 'tr_loss_bits', 'total_loss_scalar',
            'globalstep_last_logged', 'current_flos', 'total_flos', 'train_batch_size', 'num_train_epochs'].map((k) => [k]),
          indent: 2,
        });
    }
    writeFiles(dir, files);
    return { kind: 'checkpoint', dir };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Exercising what was built

class Invariant extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvariantViolation';
  }
}
const expect = (ok, message) => {
  if (!ok) throw new Invariant(message);
};

async function exerciseModel(P, ctx, shared) {
  const m = await P.AutoModelForCausalLM.from_pretrained(ctx.dir);
  try {
    // The TS config and the native one must agree (e.g. on duplicate keys, 32.0 vs 32).
    const nc = m.handle.config();
    for (const k of ['vocab_size', 'hidden_size', 'n_layer', 'n_head', 'tie_word_embeddings', 'apply_residual_connection_post_layernorm'])
      expect(nc[k] === m.config[k], `config ${k}: TypeScript reads ${JSON.stringify(m.config[k])}, native reads ${JSON.stringify(nc[k])}`);
    const V = m.config.vocab_size;
    const ids = [[1 % V, 5 % V, 7 % V, 9 % V]];
    const width = 2 * m.config.n_layer * m.config.hidden_size;
    const prefix = new P.Tensor('float32', new Float32Array(2 * width).fill(0.01), [2, width]);
    const out = await m.forward({ input_ids: ids, labels: ids }, { prefix, backward: true });
    expect(typeof out.loss === 'number', 'forward with labels returned no loss');
    expect(out.logits.dims.join() === [1, 4, V].join(), `logits dims [${out.logits.dims}] for vocab ${V}`);
    const gen = await m.generate({ input_ids: ids, max_new_tokens: 2 });
    expect(gen.dims[0] === 1 && gen.dims[1] >= 4 && gen.dims[1] <= 6, `generate returned dims [${gen.dims}]`);
    if (ctx.generateWithDefaults) {
      // The checkpoint's own generation defaults (a huge max_length would legitimately run for long: skip those).
      const g = m.generation_config;
      const long = (v) => typeof v === 'number' && v > 64;
      if (!long(g.max_length) && !long(g.max_new_tokens)) await m.generate({ input_ids: ids });
    }
    const pm = P.get_peft_model(m, new P.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 }));
    try {
      await pm.forward({ input_ids: ids, labels: ids }, { backward: true });
    } finally {
      await pm.dispose();
    }
  } finally {
    await m.dispose();
  }
}

async function exerciseTokenizer(P, ctx) {
  const tok = await P.AutoTokenizer.from_pretrained(ctx.dir);
  const texts = ['Human: 你好\n\nAssistant: ', 'hello world', '', '\uD800 lone surrogate \uDFFF', '😀😀 émoji', '  spaces  ', '\u0000\u0001'];
  for (const t of texts) {
    const enc = tok(t);
    expect(Array.isArray(enc.input_ids) && enc.input_ids.length === enc.attention_mask.length, 'tokenizer: input_ids and attention_mask differ in length');
    tok.decode(enc.input_ids, { skip_special_tokens: true });
    tok.decode(enc.input_ids);
  }
  tok(texts, { truncation: true, max_length: 8 });
  const padded = tok(texts, { padding: true, return_tensors: 'pt' });
  expect(padded.input_ids.dims[0] === texts.length, 'tokenizer: padded batch has the wrong size');
  tok.batch_decode(padded.input_ids);
  tok.pad([{ input_ids: [5, 6, 7] }, { input_ids: [5] }], { return_tensors: 'pt' });
  tok.convert_ids_to_tokens([0, 1, 2, 99999]);
  await tok.save_pretrained(path.join(ctx.dir, 'saved'));
}

async function exerciseAdapter(P, ctx, shared) {
  const pm = await P.PeftModel.from_pretrained(shared.base, ctx.dir, { is_trainable: ctx.is_trainable });
  try {
    const ids = [[5, 6, 7, 8]];
    const out = await pm.forward({ input_ids: ids, labels: ids }, { backward: ctx.is_trainable });
    expect(typeof out.loss === 'number', 'adapter forward returned no loss');
    await pm.generate({ input_ids: ids, max_new_tokens: 2 });
    await pm.save_pretrained(path.join(ctx.dir, 'resaved'));
  } finally {
    await pm.dispose();
  }
}

async function exerciseDataset(P, ctx, shared) {
  const dd = await P.load_dataset('json', { data_dir: ctx.dir });
  const tok = shared.tokenizer;
  const process_func = (example) => {
    const instruction = tok(['Human: ' + example.instruction, example.input].join('\n').trim() + '\n\nAssistant: ');
    const response = tok(example.output + tok.eos_token);
    const MAX = 32;
    return {
      input_ids: [...instruction.input_ids, ...response.input_ids].slice(0, MAX),
      attention_mask: [...instruction.attention_mask, ...response.attention_mask].slice(0, MAX),
      labels: [...Array(instruction.input_ids.length).fill(-100), ...response.input_ids].slice(0, MAX),
    };
  };
  for (const ds of Object.values(dd)) {
    expect(Array.isArray(ds.column_names) && ds.num_rows >= 0, 'dataset: bad column_names / num_rows');
    if (ds.num_rows === 0) continue;
    ds.shuffle({ seed: 42 }).select([0]);
    const tokenized = ds.map(process_func, { remove_columns: ds.column_names });
    const rows = [];
    for (let i = 0; i < Math.min(2, tokenized.num_rows); i++) rows.push(tokenized.at(i));
    const batch = shared.collator(rows);
    await shared.peft.forward(batch, { backward: true });
    await shared.peft.zero_grad();
  }
}

async function exerciseCheckpoint(P, ctx, shared) {
  P.set_seed(1);
  const pm = P.get_peft_model(shared.base, new P.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: CKPT.num_virtual_tokens, prefix_projection: CKPT.prefix_projection, encoder_hidden_size: CKPT.encoder_hidden_size }));
  try {
    const args = trainArgs(P, path.join(ctx.dir, 'out'), CKPT.step + 1, { save_strategy: 'no' });
    const trainer = new P.Trainer({ model: pm, args, train_dataset: trainRows(), data_collator: pad });
    const out = await trainer.train({ resume_from_checkpoint: ctx.dir, handle_sigint: false });
    expect(Number.isSafeInteger(out.global_step) && out.global_step >= 0, `resumed run ended at global_step ${out.global_step}`);
    expect(typeof out.training_loss === 'number', `resumed run has training_loss ${out.training_loss}`);
  } finally {
    await pm.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// API misuse

/** Valid arguments of each fuzzed call (JSON-like: cloned per case, then fields replaced). */
const API_CALLS = {
  forward: [{ input_ids: [[5, 6, 7, 8]], attention_mask: [[1, 1, 1, 1]], labels: [[5, 6, 7, 8]], num_items_in_batch: 3 }, { backward: true, return_logits: true }],
  peft_forward: [{ input_ids: [[5, 6, 7, 8]], attention_mask: [[0, 1, 1, 1]], labels: [[-100, 6, 7, 8]] }, { backward: true }],
  generate: [{ input_ids: [[5, 6]], attention_mask: [[1, 1]], max_new_tokens: 3, do_sample: true, temperature: 0.7, top_k: 5, top_p: 0.9,
    repetition_penalty: 1.1, seed: 1, eos_token_id: [2], pad_token_id: 3, output_scores: true, return_dict_in_generate: true }],
  tokenizer: ['Human: 你好', { padding: 'max_length', truncation: true, max_length: 8, return_tensors: 'pt', pad_to_multiple_of: 4, padding_side: 'left', add_special_tokens: true }],
  tokenizer_batch: [['a b', '你好'], { padding: true, return_tensors: 'pt' }],
  decode: [[5, 6, 7], { skip_special_tokens: true, clean_up_tokenization_spaces: false }],
  pad: [[{ input_ids: [5, 6], attention_mask: [1, 1] }, { input_ids: [5] }], { padding: true, return_tensors: 'pt', max_length: null }],
  collator: [{ padding: true, pad_to_multiple_of: 2, label_pad_token_id: -100 }, [{ input_ids: [5, 6], attention_mask: [1, 1], labels: [5, 6] }, { input_ids: [5], labels: [5] }]],
  training_args: [{ output_dir: 'out', per_device_train_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 1e-3, max_steps: 2, warmup_ratio: 0.1,
    lr_scheduler_type: 'cosine', logging_steps: 1, save_strategy: 'no', weight_decay: 0.01, max_grad_norm: 1, seed: 1, adam_beta1: 0.9 }],
  peft_config: [{ task_type: 'CAUSAL_LM', num_virtual_tokens: 3, prefix_projection: true, encoder_hidden_size: 8, inference_mode: false, init_weights: null }],
  train: [{ max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, logging_steps: 1, save_strategy: 'no' },
    [{ input_ids: [5, 6, 7], attention_mask: [1, 1, 1], labels: [5, 6, 7] }, { input_ids: [8, 9, 10], attention_mask: [1, 1, 1], labels: [-100, 9, 10] }]],
  load_dataset: [{ data_files: 'train.json', split: 'train', field: undefined }],
  tensor: ['float32', [1, 2, 3, 4], [2, 2]],
  from_pretrained: [{ device: 'cpu', dtype: 'float32' }],
  load_state_dict: [{ 'transformer.ln_f.bias': [32] }, { strict: false }],
};

/** Fields whose size drives work or memory: only small values, or values certainly refused (no legit long run). */
const SIZE_FIELDS = new Set(['max_new_tokens', 'max_length', 'max_steps', 'num_virtual_tokens', 'encoder_hidden_size', 'per_device_train_batch_size',
  'gradient_accumulation_steps', 'pad_to_multiple_of', 'num_items_in_batch']);

function apiValue(r, field) {
  if (SIZE_FIELDS.has(field)) return r.pick([undefined, null, NaN, -1, 0, 1, 2, 1.5, '3', 1e15, Infinity, [], {}, true]);
  return r.pick([undefined, null, NaN, Infinity, -Infinity, -1, 0, 1, 1.5, -100, 999, 1000, 2 ** 31, 2 ** 53, 1e300, '', 'x', 'cuda', 'left', 'pt',
    'float16', true, false, [], {}, [[]], [[1e9]], [[-5]], [null], [[1, 2], [3]], { a: 1 }, 'BIGINT', 'INT32', 'FLOAT32', 'FN', 'TENSOR', 'DATE', 'FROZEN']);
}

/** Non-JSON values are spelled as strings in apiValue (structuredClone-safe) and made here. */
function realize(P, v) {
  switch (v) {
    case 'BIGINT': return 5n;
    case 'INT32': return new Int32Array([5, 6]);
    case 'FLOAT32': return new Float32Array([0.5, 6]);
    case 'FN': return () => 1;
    case 'TENSOR': return new P.Tensor('int64', new BigInt64Array([5n, 6n]), [1, 2]);
    case 'DATE': return new Date(0);
    case 'FROZEN': return Object.freeze([5, 6]);
    default: return v;
  }
}

function applyEdits(P, args, edits) {
  for (const [p, v] of edits) {
    let parent = args;
    for (const k of p.slice(0, -1)) parent = parent?.[k];
    // An earlier edit may have put a frozen array or a typed array here: then this edit does not apply.
    if (parent && typeof parent === 'object' && !Object.isFrozen(parent) && !ArrayBuffer.isView(parent)) parent[p[p.length - 1]] = realize(P, v);
  }
  return args;
}

async function exerciseApi(P, ctx, shared) {
  const a = applyEdits(P, structuredClone(ctx.args), ctx.edits);
  if (ctx.extraKey && a[0] && typeof a[0] === 'object' && !Array.isArray(a[0])) a[0].not_an_option = 1;
  const tok = shared.tokenizer;
  switch (ctx.name) {
    case 'forward': return void (await shared.base.forward(a[0], a[1]));
    case 'peft_forward': return void (await shared.peft.forward(a[0], a[1]), await shared.peft.zero_grad());
    case 'generate': return void (await shared.base.generate(a[0]));
    case 'tokenizer': case 'tokenizer_batch': return void tok(a[0], a[1]);
    case 'decode': return void tok.decode(a[0], a[1]);
    case 'pad': return void tok.pad(a[0], a[1]);
    case 'collator': return void new P.DataCollatorForSeq2Seq({ tokenizer: tok, ...a[0] })(a[1]);
    case 'training_args': return void new P.TrainingArguments({ ...a[0], output_dir: path.join(ctx.dir, 'out') });
    case 'peft_config': {
      const pm = P.get_peft_model(shared.base, new P.PrefixTuningConfig(a[0]));
      try {
        await pm.forward({ input_ids: [[5, 6]], labels: [[5, 6]] }, { backward: true });
      } finally {
        await pm.dispose();
      }
      return;
    }
    case 'train': {
      const opts = { ...a[0], max_steps: Math.min(Number.isSafeInteger(a[0]?.max_steps) ? a[0].max_steps : 2, 4), output_dir: path.join(ctx.dir, 'out'), disable_tqdm: true };
      const pm = P.get_peft_model(shared.base, new P.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 }));
      try {
        await new P.Trainer({ model: pm, args: new P.TrainingArguments(opts), train_dataset: a[1], data_collator: shared.collator }).train({ handle_sigint: false });
      } finally {
        await pm.dispose();
      }
      return;
    }
    case 'load_dataset':
      fs.writeFileSync(path.join(ctx.dir, 'train.json'), JSON.stringify(DATA_ROWS));
      return void (await P.load_dataset('json', { data_dir: ctx.dir, ...a[0] }));
    case 'tensor': {
      // Arrays of numbers become the typed array a caller would pass; anything else goes in as it is.
      const data = Array.isArray(a[1]) && a[1].every((x) => typeof x === 'number') ? Float32Array.from(a[1]) : a[1];
      return void new P.Tensor(a[0], data, a[2]);
    }
    case 'from_pretrained': {
      const m = await P.AutoModelForCausalLM.from_pretrained(path.join(shared.templatesDir, 'model'), a[0]);
      return void (await m.dispose());
    }
    case 'load_state_dict': {
      const [sd, opts] = a;
      const state = {};
      for (const [k, v] of Object.entries(sd && typeof sd === 'object' ? sd : {}))
        state[k] = Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && x >= 0 && x < 1e6) ? new P.Tensor('float32', new Float32Array(v.reduce((x, y) => x * y, 1)), v) : v;
      const m = await P.AutoModelForCausalLM.from_pretrained(path.join(shared.templatesDir, 'model'));
      try {
        await m.load_state_dict(state, opts);
      } finally {
        await m.dispose();
      }
      return;
    }
  }
  throw new Error(`fuzz: unknown api call ${ctx.name}`);
}

const exercisers = {
  api: exerciseApi,
  model: exerciseModel,
  tokenizer: exerciseTokenizer,
  adapter: exerciseAdapter,
  dataset: exerciseDataset,
  checkpoint: exerciseCheckpoint,
};

module.exports = { WEIGHTS, targetOf, setup, loadTemplates, builders, exercisers, Invariant, CKPT };
