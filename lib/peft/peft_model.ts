/**
 * PeftModelForCausalLM for prefix tuning (peft/peft_model.py): a frozen BLOOM plus a PrefixEncoder per adapter whose
 * output becomes every layer's past key/values. Names, counts, saved files and loading follow PEFT 0.21.
 */
import '../runtime/dispose_polyfill';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeftNodeError } from '../errors';
import { BloomConfig } from '../models/bloom/configuration_bloom';
import { BloomForCausalLM, CausalLMInputs, CausalLMOutput } from '../models/bloom/modeling_bloom';
import { Parameter } from '../nn/parameter';
import { Decoder, stream_text } from '../generation/streamers';
import { GenerateOptions, GenerateOutput } from '../generation/utils';
import { Tensor } from '../tensor';
import { writeDirAtomic } from '../utils/fs_atomic';
import { readSafetensors, serializeSafetensors } from '../utils/safetensors';
import { CONFIG_NAME, PEFT_FORMAT_VERSION, PrefixTuningConfig, TaskType } from './config';
import { PrefixEncoder } from './prefix_encoder';
import { PastKeyValues } from '../cache_utils';
import { IntMatrixLike, toIntMatrix } from '../tensor';
import { load_state_dict_into, read_state_dict } from './save_and_load';

export const WEIGHTS_NAME = 'adapter_model.safetensors';

// ---------------------------------------------------------------------------------------------------------------
// Parameter counts (usable from config.json alone, without loading weights)

/** Python's `f"{x:.{digits}f}"`: correctly rounded, ties to even (JS toFixed rounds ties up). */
function pythonFixed(x: number, digits: number): string {
  const exact = Math.abs(x).toFixed(100); // exact decimal expansion for these magnitudes
  const [int, frac] = exact.split('.');
  const kept = BigInt(int + frac.slice(0, digits));
  const rest = frac.slice(digits);
  const half = '5' + '0'.repeat(rest.length - 1);
  let n = kept;
  if (rest > half || (rest === half && kept % 2n === 1n)) n += 1n;
  const s = n.toString().padStart(digits + 1, '0');
  const out = `${s.slice(0, s.length - digits)}.${s.slice(s.length - digits)}`;
  return (x < 0 && /[1-9]/.test(out) ? '-' : '') + out;
}

/** PEFT's print_trainable_parameters line. */
export function format_trainable_parameters(trainable: number, all: number): string {
  const n = (v: number) => v.toLocaleString('en-US');
  return `trainable params: ${n(trainable)} || all params: ${n(all)} || trainable%: ${pythonFixed((100 * trainable) / all, 4)}`;
}

/** Parameters of BloomForCausalLM from its config (tied lm_head counted once, as named_parameters does). */
export function count_bloom_parameters(config: BloomConfig): number {
  const V = config.vocab_size, D = config.hidden_size;
  const layer = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D);
  return V * D + 2 * D + config.n_layer * layer + 2 * D + (config.tie_word_embeddings ? 0 : V * D);
}

/** [name, shape] of a prefix encoder's parameters, PEFT's names relative to `prompt_encoder.<adapter>.`. */
export function prefix_encoder_shapes(config: PrefixTuningConfig): [string, number[]][] {
  const P = config.num_virtual_tokens!, D = config.token_dim!, L = config.num_layers!;
  const W = 2 * L * D;
  if (!config.prefix_projection || config.inference_mode) return [['embedding.weight', [P, W]]];
  const E = config.encoder_hidden_size ?? D;
  return [
    ['embedding.weight', [P, D]],
    ['transform.0.weight', [E, D]],
    ['transform.0.bias', [E]],
    ['transform.2.weight', [W, E]],
    ['transform.2.bias', [W]],
  ];
}

/**
 * PEFT's _prepare_prompt_learning_config: fills num_layers, token_dim, num_attention_heads, encoder_hidden_size and
 * num_transformer_submodules from the model config. A value the user set that contradicts the model is an error.
 */
export function prepare_prompt_learning_config(config: PrefixTuningConfig, model: BloomConfig): PrefixTuningConfig {
  const fill = (field: 'num_layers' | 'token_dim' | 'num_attention_heads', value: number, modelKey: string) => {
    const set = config[field];
    if (set !== null && set !== value)
      throw new PeftNodeError(
        'ERR_CONFIG',
        `PrefixTuningConfig.${field} is ${set}, but the model has ${modelKey} = ${value}; leave it unset to take the model's`,
      );
    config[field] = value;
  };
  fill('num_layers', model.n_layer, 'n_layer');
  fill('token_dim', model.hidden_size, 'hidden_size');
  fill('num_attention_heads', model.n_head, 'n_head');
  if (config.encoder_hidden_size === null) config.encoder_hidden_size = config.token_dim;
  if (config.num_transformer_submodules === null) config.num_transformer_submodules = 1; // CAUSAL_LM
  if (config.num_virtual_tokens === null)
    throw new PeftNodeError('ERR_CONFIG', 'PrefixTuningConfig: num_virtual_tokens must be set (a positive integer)');
  return config;
}

/** [trainable, all] for a BLOOM config plus a prefix-tuning config, without loading any weights. */
export function count_prefix_tuning_parameters(model: BloomConfig, config: PrefixTuningConfig): [number, number] {
  const filled = prepare_prompt_learning_config(
    new PrefixTuningConfig({ ...config.to_dict(), num_layers: null, token_dim: null, num_attention_heads: null }),
    model,
  );
  const trainable = prefix_encoder_shapes(filled).reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0);
  return [trainable, count_bloom_parameters(model) + trainable];
}

// ---------------------------------------------------------------------------------------------------------------

export interface PeftForwardOptions {
  /** Accumulate gradients into the active adapter's parameters (like `loss.backward()`). Needs labels. */
  backward?: boolean;
  /** Return logits (default true). */
  return_logits?: boolean;
  /** Multiply the loss by this (HF Trainer's `loss *= num_processes` under data-parallel training). */
  loss_scale?: number;
}

export interface SavePretrainedOptions {
  /** Adapters to save (default: all). */
  selected_adapters?: string[];
}

export interface PeftFromPretrainedOptions {
  adapter_name?: string;
  /**
   * PEFT refuses this for prompt-learning adapters. peft-node continues training from the saved prefix: the
   * adapter's `prompt_embeddings` become a trainable embedding (a projection MLP is not in the file, so the continued
   * adapter has prefix_projection false).
   */
  is_trainable?: boolean;
}

/** PEFT's PeftModel; for prefix tuning of a causal LM use PeftModelForCausalLM (what get_peft_model returns). */
export class PeftModel implements AsyncDisposable {
  /** The wrapped model (frozen). PEFT's prompt-learning PeftModel holds it directly as `base_model`. */
  readonly base_model: BloomForCausalLM;
  readonly peft_config: Record<string, PrefixTuningConfig> = {};
  active_adapter: string;
  /** Like torch's module.training. */
  training: boolean;
  /** @internal per adapter, resolved once its parameters exist natively */
  protected readonly encoders = new Map<string, Promise<PrefixEncoder>>();
  private disposed = false;
  /** Calls in progress, registered when made: dispose() waits for them (they were issued before it). */
  private readonly inflight = new Set<Promise<unknown>>();

  /** @internal use get_peft_model or PeftModel.from_pretrained */
  constructor(model: BloomForCausalLM, config: PrefixTuningConfig, adapter_name: string, encoder: Promise<PrefixEncoder>) {
    this.base_model = model;
    this.active_adapter = adapter_name;
    this.peft_config[adapter_name] = config;
    this.encoders.set(adapter_name, encoder);
    this.training = model.training;
    encoder.catch(() => undefined); // surfaced by the first call that needs it
  }

  protected check(): void {
    if (this.disposed) throw new PeftNodeError('ERR_DISPOSED', 'this PEFT model was disposed');
  }

  /**
   * Runs `call` now and remembers it until it settles. The adapter's encoder is only reached after an await, so
   * without this a dispose() issued right after a call could free the encoder before the call queued its work.
   */
  protected track<T>(call: () => Promise<T>): Promise<T> {
    this.check();
    const p = call();
    this.inflight.add(p);
    const done = () => void this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  /** The active adapter's PrefixEncoder (PEFT's `prompt_encoder[active_adapter]`). */
  async prompt_encoder(adapter_name = this.active_adapter): Promise<PrefixEncoder> {
    this.check();
    const enc = this.encoders.get(adapter_name);
    if (!enc) throw new PeftNodeError('ERR_INVALID_INPUT', `no adapter named '${adapter_name}' (have: ${[...this.encoders.keys()].join(', ')})`);
    return enc;
  }

  /**
   * Runs the base model with the active adapter's prefix as past_key_values (PEFT prepends P ones to attention_mask;
   * labels stay as given). With `backward`, gradients accumulate into the prefix parameters.
   */
  async forward(inputs: CausalLMInputs, options: PeftForwardOptions = {}): Promise<CausalLMOutput> {
    return this.track(async () => {
      const [batch, ids] = batchOf(inputs);
      await using past = await this.get_prompt(batch, { requires_grad: options.backward ?? false });
      return await this.base_model.forward({ ...inputs, input_ids: ids }, { ...options, past_key_values: past });
    });
  }

  /**
   * PEFT's get_prompt(batch_size): the active adapter's prefix for `batch_size` rows, as the base model's
   * past_key_values. With `requires_grad`, a backward through the model that takes them reaches the adapter.
   */
  async get_prompt(batch_size: number, options: { requires_grad?: boolean; adapter_name?: string } = {}): Promise<PastKeyValues> {
    const encoder = await this.prompt_encoder(options.adapter_name ?? this.active_adapter);
    return encoder.get_prompt(batch_size, { requires_grad: options.requires_grad ?? false });
  }

  /**
   * PEFT's generate(): the active adapter's prefix is the initial KV cache (get_prompt), then transformers' decoding.
   * Returns prompt + new ids as an int64 Tensor [B, T + n].
   */
  generate(options: GenerateOptions & { return_dict_in_generate: true }): Promise<GenerateOutput>;
  generate(options: GenerateOptions): Promise<Tensor>;
  async generate(options: GenerateOptions): Promise<Tensor | GenerateOutput> {
    return this.track(async () => {
      if (typeof options !== 'object' || options === null) return this.base_model.generate(options); // its error
      const [batch, ids] = batchOf(options);
      await using past = await this.get_prompt(batch);
      return await this.base_model.generate({ ...options, input_ids: ids, past_key_values: past });
    });
  }

  /** generate() as an async iterator of text pieces (batch 1): never splits a character; the prompt is skipped. */
  generate_stream(tokenizer: Decoder, options: Omit<GenerateOptions, 'streamer'>): AsyncGenerator<string, void, undefined> {
    return stream_text((streamer) => this.generate({ ...options, streamer }), tokenizer);
  }

  /** All parameters under PEFT's names: `base_model.transformer.…` (frozen), then `prompt_encoder.<adapter>.…`. */
  named_parameters(): [string, Parameter][] {
    this.check();
    const out: [string, Parameter][] = this.base_model
      .named_parameters()
      .map(([n, p]) => [`base_model.${n}`, new Parameter(`base_model.${n}`, p.shape, false, () => p.data(), () => p.grad(), () => p.native_ref(), (t) => p.copy_(t))]);
    for (const [adapter, config] of Object.entries(this.peft_config)) {
      for (const [rel, shape] of prefix_encoder_shapes(config)) {
        const name = `prompt_encoder.${adapter}.${rel}`;
        out.push([
          name,
          new Parameter(
            name,
            shape,
            true,
            async () => (await this.prompt_encoder(adapter)).get_parameter(rel),
            async () => (await this.prompt_encoder(adapter)).get_grad(rel),
            async () => [(await this.prompt_encoder(adapter)).handle, rel],
            async (t) => (await this.prompt_encoder(adapter)).set_parameter(rel, t),
          ),
        ]);
      }
    }
    return out;
  }

  /** torch's parameters(): every Parameter, frozen ones included (an optimizer takes those with requires_grad). */
  parameters(): Parameter[] {
    return this.named_parameters().map(([, p]) => p);
  }

  /**
   * torch's state_dict() of PEFT's module: `base_model.transformer.…` and the tied `base_model.lm_head.weight`,
   * `prompt_encoder.<adapter>.…` for every adapter, then `word_embeddings.weight` (PEFT registers the input
   * embeddings again), as float32 copies; tied names share one Tensor.
   */
  async state_dict(): Promise<Record<string, Tensor>> {
    return this.track(() => read_state_dict(this));
  }

  /**
   * torch's load_state_dict: with `strict` (default) missing or unexpected keys are ERR_WEIGHT_MISSING naming them;
   * a wrong shape is ERR_SHAPE_MISMATCH even when not strict. Everything is checked before anything is copied.
   * Returns `{ missing_keys, unexpected_keys }`. Base-model keys write the base model's weights, as in torch.
   */
  async load_state_dict(
    state: Record<string, Tensor>,
    options: { strict?: boolean } = {},
  ): Promise<{ missing_keys: string[]; unexpected_keys: string[] }> {
    return this.track(() => load_state_dict_into(this, state, (options ?? {}).strict ?? true));
  }

  /** [trainable, all] as PEFT counts them (named_parameters, requires_grad). */
  get_nb_trainable_parameters(): [number, number] {
    let trainable = 0, all = 0;
    for (const [, p] of this.named_parameters()) {
      all += p.numel;
      if (p.requires_grad) trainable += p.numel;
    }
    return [trainable, all];
  }

  /** Prints PEFT's line, e.g. `trainable params: 983,040 || all params: 1,304,094,720 || trainable%: 0.0754`. */
  print_trainable_parameters(): string {
    const line = format_trainable_parameters(...this.get_nb_trainable_parameters());
    console.log(line);
    return line;
  }

  /** The [P, 2·L·D] float32 prefix an adapter file stores (the MLP's output when projecting). */
  async get_prompt_embedding_to_save(adapter_name = this.active_adapter): Promise<Tensor> {
    return this.track(async () => (await this.prompt_encoder(adapter_name)).prompt_embeddings());
  }

  /** Clears the prefix gradients (torch's zero_grad with set_to_none). */
  async zero_grad(): Promise<void> {
    return this.track(async () => {
      for (const name of this.encoders.keys()) await (await this.prompt_encoder(name)).zero_grad();
    });
  }

  train(mode = true): this {
    this.training = mode;
    this.base_model.train(mode);
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /**
   * Writes each adapter as PEFT does: `adapter_config.json` (inference_mode true, sorted keys, indent 2, no trailing
   * newline) and `adapter_model.safetensors` (`prompt_embeddings`, F32), under `dir` for "default" and
   * `dir/<name>/` otherwise, plus a README.md model card. The directory appears complete or not at all; in an
   * existing directory each file is replaced atomically (config last).
   */
  async save_pretrained(dir: string, options: SavePretrainedOptions = {}): Promise<void> {
    return this.track(() => this.savePretrained(dir, options));
  }

  private async savePretrained(dir: string, options: SavePretrainedOptions): Promise<void> {
    if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory())
      throw new PeftNodeError('ERR_IO', `Provided path (${dir}) should be a directory, not a file`);
    const adapters = options.selected_adapters ?? Object.keys(this.peft_config);
    const files: { sub: string; config: string; weights: Buffer }[] = [];
    for (const name of adapters) {
      const config = this.peft_config[name];
      if (!config) throw new PeftNodeError('ERR_INVALID_INPUT', `no adapter named '${name}'`);
      const embeddings = await this.get_prompt_embedding_to_save(name);
      const saved = new PrefixTuningConfig({
        ...config.to_dict(),
        inference_mode: true,
        base_model_name_or_path: config.base_model_name_or_path ?? this.base_model.name_or_path,
      });
      files.push({
        sub: name === 'default' ? '' : name,
        config: saved.to_json_string(),
        weights: serializeSafetensors([['prompt_embeddings', embeddings]], { format: 'pt' }),
      });
    }
    const base = this.peft_config[adapters[0]]?.base_model_name_or_path ?? this.base_model.name_or_path;
    const hasCard = fs.existsSync(path.join(dir, 'README.md'));
    writeDirAtomic(
      dir,
      (tmp) => {
        for (const f of files) {
          const out = path.join(tmp, f.sub);
          fs.mkdirSync(out, { recursive: true });
          fs.writeFileSync(path.join(out, WEIGHTS_NAME), f.weights);
          fs.writeFileSync(path.join(out, CONFIG_NAME), f.config);
        }
        if (!hasCard) fs.writeFileSync(path.join(tmp, 'README.md'), modelCard(base, dir));
      },
      [CONFIG_NAME],
    );
  }

  /** Frees the adapters' native parameters. The base model stays usable (it belongs to the caller). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await Promise.allSettled([...this.inflight]);
    for (const enc of this.encoders.values()) await (await enc.catch(() => undefined))?.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  /**
   * Loads a PREFIX_TUNING adapter saved by PEFT or peft-node onto `model` (PEFT's PeftModel.from_pretrained): the
   * prefix is `prompt_embeddings`, used as PEFT does in inference mode; the model is put in eval mode.
   */
  static async from_pretrained(
    model: BloomForCausalLM,
    dir: string,
    options: PeftFromPretrainedOptions = {},
  ): Promise<PeftModelForCausalLM> {
    const adapter_name = options.adapter_name ?? 'default';
    const is_trainable = options.is_trainable ?? false;
    const config = PrefixTuningConfig.from_pretrained(dir);
    if (config.task_type !== null && config.task_type !== TaskType.CAUSAL_LM)
      throw new PeftNodeError('ERR_UNSUPPORTED_ADAPTER', `${dir}: task_type ${config.task_type} adapters need another model head; peft-node loads CAUSAL_LM adapters`);
    const mc = model.config;
    const expect = (field: 'num_layers' | 'token_dim' | 'num_attention_heads', value: number, what: string) => {
      if (config[field] !== null && config[field] !== value)
        throw new PeftNodeError('ERR_SHAPE_MISMATCH', `adapter ${dir} was made for ${field} = ${config[field]}, but the base model has ${what} = ${value}`);
    };
    expect('num_layers', mc.n_layer, 'n_layer');
    expect('token_dim', mc.hidden_size, 'hidden_size');
    expect('num_attention_heads', mc.n_head, 'n_head');
    if (config.base_model_name_or_path !== null && config.base_model_name_or_path !== model.name_or_path)
      process.emitWarning(
        `adapter ${dir} was trained on '${config.base_model_name_or_path}', loading it onto '${model.name_or_path}'`,
        'PeftNodeWarning',
      );
    const weightsFile = path.join(dir, WEIGHTS_NAME);
    if (!fs.existsSync(weightsFile)) {
      const bin = path.join(dir, 'adapter_model.bin');
      throw new PeftNodeError(
        'ERR_FILE_NOT_FOUND',
        fs.existsSync(bin)
          ? `${dir} holds adapter_model.bin (pickle); peft-node reads adapter_model.safetensors — re-save it with PEFT's save_pretrained(safe_serialization=True)`
          : `adapter weights not found: ${weightsFile}`,
      );
    }
    const tensors = readSafetensors(weightsFile).tensors;
    const emb = tensors.get('prompt_embeddings');
    if (!emb) throw new PeftNodeError('ERR_WEIGHT_MISSING', `${weightsFile} has no 'prompt_embeddings' tensor (found: ${[...tensors.keys()].join(', ')})`);
    prepare_prompt_learning_config(config, mc);
    const expected = [config.num_virtual_tokens!, 2 * mc.n_layer * mc.hidden_size];
    if (emb.dims.length !== 2 || emb.dims[0] !== expected[0] || emb.dims[1] !== expected[1])
      throw new PeftNodeError('ERR_SHAPE_MISMATCH', `${weightsFile}: prompt_embeddings has shape [${emb.dims}], expected [${expected}] (num_virtual_tokens, 2·n_layer·hidden_size)`);
    config.inference_mode = !is_trainable;
    if (is_trainable) config.prefix_projection = false; // the MLP is not saved: continue from the embeddings
    const encoder = PrefixEncoder.create({
      num_virtual_tokens: config.num_virtual_tokens!,
      num_layers: mc.n_layer,
      token_dim: mc.hidden_size,
      inference_mode: !is_trainable,
      device: model.device,
      model,
    }).then(async (enc) => {
      await enc.set_parameter('embedding.weight', emb);
      return enc;
    });
    const peft = new PeftModelForCausalLM(model, config, adapter_name, encoder);
    await encoder;
    return is_trainable ? peft : peft.eval();
  }
}

/** PEFT's PeftModelForCausalLM. */
export class PeftModelForCausalLM extends PeftModel {}

function modelCard(base: string | null, dir: string): string {
  const front = ['---'];
  if (base) front.push(`base_model: ${base}`);
  front.push('library_name: peft', 'pipeline_tag: text-generation', 'tags:');
  if (base) front.push(`- base_model:adapter:${base}`);
  front.push('- prefix-tuning', '- peft-node', '---');
  return `${front.join('\n')}

# ${path.basename(path.resolve(dir))}

A prefix-tuning adapter (PEFT \`PREFIX_TUNING\`, adapter format of PEFT ${PEFT_FORMAT_VERSION})${base ? ` for \`${base}\`` : ''},
saved by peft-node. Load it with PEFT (\`PeftModel.from_pretrained(model, path)\`) or with peft-node
(\`await PeftModel.from_pretrained(model, path)\`).
`;
}

/**
 * PEFT's get_peft_model for prefix tuning: fills the config from the model, freezes nothing new (the base is always
 * frozen) and attaches a freshly initialised PrefixEncoder, drawn from the global generator in call order (so
 * `set_seed(n)` first reproduces Python's initial prefix). Returns at once; the encoder is ready before any call.
 */
export function get_peft_model(model: BloomForCausalLM, peft_config: PrefixTuningConfig, adapter_name = 'default'): PeftModelForCausalLM {
  if (!(model instanceof BloomForCausalLM))
    throw new PeftNodeError('ERR_INVALID_INPUT', 'get_peft_model needs a model from AutoModelForCausalLM.from_pretrained');
  if (!(peft_config instanceof PrefixTuningConfig))
    throw new PeftNodeError('ERR_INVALID_INPUT', 'get_peft_model needs a PrefixTuningConfig');
  if (peft_config.task_type !== TaskType.CAUSAL_LM)
    throw new PeftNodeError('ERR_CONFIG', `get_peft_model: task_type must be TaskType.CAUSAL_LM for ${model.constructor.name}, got ${peft_config.task_type}`);
  prepare_prompt_learning_config(peft_config, model.config);
  const name = model.name_or_path || null;
  if (peft_config.base_model_name_or_path !== null && peft_config.base_model_name_or_path !== name)
    process.emitWarning(
      `The PEFT config's \`base_model_name_or_path\` was renamed from '${peft_config.base_model_name_or_path}' to '${name}'.`,
      'PeftNodeWarning',
    );
  peft_config.base_model_name_or_path = name;
  const encoder = PrefixEncoder.create({
    num_virtual_tokens: peft_config.num_virtual_tokens!,
    num_layers: peft_config.num_layers!,
    token_dim: peft_config.token_dim!,
    encoder_hidden_size: peft_config.encoder_hidden_size!,
    prefix_projection: peft_config.prefix_projection,
    inference_mode: peft_config.inference_mode,
    zero_init: peft_config.init_weights === 'zero',
    device: model.device,
    model,
  });
  return new PeftModelForCausalLM(model, peft_config, adapter_name, encoder);
}

/** The batch size of `inputs.input_ids`, and the ids as a tensor (converted once, not again by the base model). */
function batchOf(inputs: { input_ids: IntMatrixLike }): [number, Tensor] {
  if (typeof inputs !== 'object' || inputs === null)
    throw new PeftNodeError('ERR_INVALID_INPUT', 'forward() / generate() need an inputs object with input_ids');
  const ids = toIntMatrix(inputs.input_ids, 'input_ids');
  return [ids.dims[0], new Tensor('int32', ids.data, ids.dims)];
}
