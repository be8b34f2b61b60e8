/**
 * BloomForCausalLM: transformers' BLOOM causal LM, computed by the native addon (native/core/bloom.cpp). The base
 * weights are frozen. Like transformers' model it takes `past_key_values` (what a PEFT prefix adapter computes, see
 * PeftModel.get_prompt) and knows nothing of adapters; a backward through them reaches whoever made them.
 */
import '../../runtime/dispose_polyfill';
import { PastKeyValues } from '../../cache_utils';
import { PeftNodeError, nativeCall, repr } from '../../errors';
import { NativeBloomModel, NativeForwardInputs, native } from '../../runtime/native';
import { Parameter } from '../../nn/parameter';
import { check_allocation, dtype_bytes } from '../../runtime/memory';
import { SerialQueue } from '../../runtime/serial_queue';
import { IntMatrixLike, Tensor, isFloatArray, toIntMatrix, typedArrayKind } from '../../tensor';
import { GenerationConfig } from '../../generation/configuration_utils';
import { Decoder, stream_text } from '../../generation/streamers';
import { GenerateOptions, GenerateOutput, run_generate } from '../../generation/utils';
import { BloomConfig } from './configuration_bloom';

export interface CausalLMInputs {
  /** [batch, seq_len] token ids (a 1-D array is one row). */
  input_ids: IntMatrixLike;
  /** 1 for real tokens, 0 for padding; all ones when omitted. */
  attention_mask?: IntMatrixLike;
  /** Next-token targets (shifted inside, as transformers does); -100 is ignored. */
  labels?: IntMatrixLike;
  /** When set, loss = sum of token losses / num_items_in_batch (HF Trainer's gradient-accumulation normalisation). */
  num_items_in_batch?: number;
}

export interface ForwardOptions {
  /** Accumulate d(loss)/d(whatever made past_key_values) — like `loss.backward()`. Needs labels. */
  backward?: boolean;
  /** Every layer's key/value prefix (transformers' past_key_values), e.g. from a PEFT model's get_prompt(batch). */
  past_key_values?: PastKeyValues;
  /**
   * A raw prefix [num_virtual_tokens, 2·n_layer·hidden_size] in PEFT's layout, looked up for every row like PEFT's
   * prefix embedding (PastKeyValues.from_prefix); its gradient comes back as `prefix_grad`.
   */
  prefix?: Tensor | Float32Array | Float64Array;
  /** Return logits (default true). Training loops set false to skip copying [B, T, V] floats. */
  return_logits?: boolean;
  /**
   * Multiply the loss (returned and differentiated) by this: HF Trainer's `loss *= num_processes` under
   * data-parallel training with average_tokens_across_devices. Default 1.
   */
  loss_scale?: number;
}

export interface CausalLMOutput {
  loss?: number;
  /** [B, T, vocab_size] (float32; float64 for a float64 model). */
  logits?: Tensor;
  /** Gradient of the loss w.r.t. `options.prefix`, same shape and dtype. */
  prefix_grad?: Tensor;
}

export class BloomForCausalLM implements AsyncDisposable {
  readonly config: BloomConfig;
  readonly name_or_path: string;
  /** Generation defaults: the checkpoint's generation_config.json, else the token ids of config.json. */
  generation_config: GenerationConfig;
  /** How attention is computed (transformers' config._attn_implementation), chosen at from_pretrained. */
  attn_implementation: AttnImplementation = 'eager';
  /** Like torch's module.training; HF's from_pretrained returns a model in eval mode. */
  training = false;
  private readonly handle: NativeBloomModel;
  private readonly queue = new SerialQueue();
  private disposed = false;

  /** @internal use AutoModelForCausalLM.from_pretrained / BloomForCausalLM.from_pretrained */
  constructor(handle: NativeBloomModel, config: BloomConfig, name_or_path: string, generation_config?: GenerationConfig) {
    this.handle = handle;
    this.config = config;
    this.name_or_path = name_or_path;
    this.generation_config = generation_config ?? GenerationConfig.from_model_dir(name_or_path, config.raw);
  }

  /** Loads a BLOOM directory (config.json + safetensors). See AutoModelForCausalLM.from_pretrained for options. */
  static async from_pretrained(dir: string, options: FromPretrainedOptions = {}): Promise<BloomForCausalLM> {
    if (typeof dir !== 'string') throw new PeftNodeError('ERR_INVALID_INPUT', `from_pretrained needs a directory path (a string), got ${repr(dir)}`);
    options = options ?? {};
    const config = BloomConfig.from_pretrained(dir);
    const device = resolveDevice(options.device ?? 'cpu');
    const requested = options.dtype ?? options.torch_dtype ?? 'auto';
    const dtype = requested === 'auto' ? (config.dtype ?? 'float32') : requested;
    const attn_implementation = options.attn_implementation ?? 'eager';
    if (!ATTN_IMPLEMENTATIONS.includes(attn_implementation))
      throw new PeftNodeError('ERR_INVALID_INPUT', `attn_implementation must be one of ${ATTN_IMPLEMENTATIONS.join(', ')}, got ${repr(attn_implementation)}`);
    const handle = await nativeCall(() => native().BloomModel.load(dir, device, dtype, { attnImplementation: attn_implementation }));
    const model = new BloomForCausalLM(handle, config, dir);
    model.attn_implementation = attn_implementation;
    return model;
  }

  private check(): void {
    if (this.disposed) throw new PeftNodeError('ERR_DISPOSED', 'this model was disposed');
  }

  /** @internal the native model (for objects that share its thread) */
  native_module(): NativeBloomModel {
    this.check();
    return this.handle;
  }

  /** "cpu", "cuda:0", ... */
  get device(): string {
    this.check();
    return this.handle.config().device;
  }

  /** "float32", "bfloat16", ... */
  get dtype(): string {
    this.check();
    return this.handle.config().dtype;
  }

  train(mode = true): this {
    this.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /**
   * Runs the model (off the main thread). With `labels`, returns the causal-LM loss as transformers computes it;
   * with `backward: true` also accumulates the prefix gradient.
   */
  async forward(inputs: CausalLMInputs, options: ForwardOptions = {}): Promise<CausalLMOutput> {
    this.check();
    if (typeof inputs !== 'object' || inputs === null)
      throw new PeftNodeError('ERR_INVALID_INPUT', `forward() needs an inputs object { input_ids, attention_mask?, labels? }, got ${repr(inputs)}`);
    options = options ?? {};
    const ids = toIntMatrix(inputs.input_ids, 'input_ids');
    const [B, T] = ids.dims;
    const nativeInputs: NativeForwardInputs = { inputIds: ids.data, batch: B, seqLen: T };
    const sameShape = (x: IntMatrixLike, name: string): Int32Array => {
      const m = toIntMatrix(x, name);
      if (m.dims[0] !== B || m.dims[1] !== T)
        throw new PeftNodeError(
          'ERR_INVALID_INPUT',
          `${name} has shape [${m.dims}] but input_ids has shape [${ids.dims}]`,
        );
      return m.data;
    };
    if (inputs.attention_mask !== undefined) nativeInputs.attentionMask = sameShape(inputs.attention_mask, 'attention_mask');
    if (inputs.labels !== undefined) nativeInputs.labels = sameShape(inputs.labels, 'labels');
    if (inputs.num_items_in_batch !== undefined) {
      const n = inputs.num_items_in_batch;
      if (!Number.isSafeInteger(n) || n <= 0)
        throw new PeftNodeError('ERR_INVALID_INPUT', `num_items_in_batch must be a positive integer, got ${n}`);
      nativeInputs.numItemsInBatch = n;
    }
    if (options.loss_scale !== undefined && !(typeof options.loss_scale === 'number' && Number.isFinite(options.loss_scale) && options.loss_scale > 0))
      throw new PeftNodeError('ERR_INVALID_INPUT', `loss_scale must be a finite number > 0, got ${repr(options.loss_scale)}`);
    if (options.backward && inputs.labels === undefined)
      throw new PeftNodeError('ERR_INVALID_INPUT', 'backward needs labels (there is no loss to differentiate)');
    if (options.backward && options.prefix === undefined && options.past_key_values === undefined)
      throw new PeftNodeError('ERR_INVALID_INPUT', "backward needs past_key_values or a prefix (a PEFT model passes its adapter's): the base model's weights are frozen (nothing would get a gradient)");
    if (options.prefix !== undefined && options.past_key_values !== undefined)
      throw new PeftNodeError('ERR_INVALID_INPUT', 'pass either prefix or past_key_values, not both');
    if (options.past_key_values !== undefined && !(options.past_key_values instanceof PastKeyValues))
      throw new PeftNodeError('ERR_INVALID_INPUT', `past_key_values must be a PastKeyValues (a PEFT model's get_prompt()), got ${repr(options.past_key_values)}`);
    const returnLogits = options.return_logits ?? true;
    if (returnLogits) {
      // Refused before anything is allocated: the model-dtype logits and the JS array they are copied into.
      const V = this.config.vocab_size, n = B * T * V, dtype = this.dtype;
      check_allocation(
        `forward on a [${B}, ${T}] batch with vocab_size ${V}`,
        n * (dtype_bytes(dtype) + (dtype === 'float64' ? 8 : 4)),
        this.device,
        'use a smaller batch or shorter sequences (training loops pass return_logits: false)',
        n,
      );
    }
    // A raw prefix: past_key_values made here, whose gradient is the prefix's.
    const own = options.prefix !== undefined
      ? PastKeyValues.from_prefix(options.prefix, 2 * this.config.n_layer * this.config.hidden_size, { batch_size: B, requires_grad: options.backward ?? false })
      : undefined;
    const past = own ?? options.past_key_values;
    try {
      const r = await this.queue.run(() =>
        nativeCall(() =>
          this.handle.forward(nativeInputs, {
            backward: options.backward ?? false,
            returnLogits,
            pastKeyValues: past?.handle,
            ...(options.loss_scale !== undefined && options.loss_scale !== 1 ? { lossScale: options.loss_scale } : {}),
          }),
        ),
      );
      const out: CausalLMOutput = {};
      if (r.loss !== undefined) out.loss = r.loss;
      if (r.logits && r.logitsDims)
        out.logits = new Tensor(typedArrayKind(r.logits) === 'Float64Array' ? 'float64' : 'float32', r.logits, r.logitsDims);
      if (own && options.backward) {
        const grad = await own.grad();
        if (grad) out.prefix_grad = grad;
      }
      return out;
    } finally {
      await own?.dispose();
    }
  }

  /**
   * Generates continuations like transformers' generate(): returns prompt + new ids as an int64 Tensor [B, T + n]
   * (or `{ sequences, scores }` with return_dict_in_generate). `past_key_values` (a PEFT prefix) is the initial cache.
   */
  generate(options: GenerateOptions & { past_key_values?: PastKeyValues; return_dict_in_generate: true }): Promise<GenerateOutput>;
  generate(options: GenerateOptions & { past_key_values?: PastKeyValues }): Promise<Tensor>;
  async generate(options: GenerateOptions & { past_key_values?: PastKeyValues }): Promise<Tensor | GenerateOutput> {
    this.check();
    if (typeof options !== 'object' || options === null)
      throw new PeftNodeError('ERR_INVALID_INPUT', `generate() needs an options object { input_ids, max_new_tokens?, ... }, got ${repr(options)}`);
    const past = options.past_key_values;
    if (past !== undefined && !(past instanceof PastKeyValues))
      throw new PeftNodeError('ERR_INVALID_INPUT', `past_key_values must be a PastKeyValues (a PEFT model's get_prompt()), got ${repr(past)}`);
    return this.queue.run(() => nativeCall(() => run_generate(this.handle, this.generation_config, options, past)));
  }

  /** generate() as an async iterator of text pieces (batch 1): never splits a character; the prompt is skipped. */
  generate_stream(tokenizer: Decoder, options: Omit<GenerateOptions, 'streamer'> & { past_key_values?: PastKeyValues }): AsyncGenerator<string, void, undefined> {
    return stream_text((streamer) => this.generate({ ...options, streamer }), tokenizer);
  }

  /** Parameters under transformers' names; the tied lm_head is listed once (as torch's named_parameters does). */
  named_parameters(): [string, Parameter][] {
    this.check();
    return this.handle.parameterInfo().map(([name, shape, requiresGrad]) => [
      name,
      new Parameter(name, shape, requiresGrad, () => this.get_parameter(name), () => this.get_grad(name), [this.handle, name], async (t) => {
        await this.load_state_dict({ [name]: t }, { strict: false });
      }),
    ]);
  }

  /** Total number of parameters (tied weights counted once). */
  num_parameters(): number {
    return this.named_parameters().reduce((n, [, p]) => n + p.numel, 0);
  }

  /** One parameter's values as float32. */
  async get_parameter(name: string): Promise<Tensor> {
    this.check();
    const shape = this.handle.parameterInfo().find(([n]) => n === name)?.[1];
    if (!shape) throw new PeftNodeError('ERR_INVALID_INPUT', `the model has no parameter '${name}'`);
    const data = await this.queue.run(() => nativeCall(() => this.handle.getParameter(name)));
    return new Tensor('float32', data, shape);
  }

  /** A parameter's .grad, or null. The base model is frozen, so this stays null (tests check it natively). */
  async get_grad(name: string): Promise<Tensor | null> {
    this.check();
    const shape = this.handle.parameterInfo().find(([n]) => n === name)?.[1];
    if (!shape) throw new PeftNodeError('ERR_INVALID_INPUT', `the model has no parameter '${name}'`);
    const data = await this.queue.run(() => nativeCall(() => this.handle.getGrad(name)));
    return data ? new Tensor('float32', data, shape) : null;
  }

  /** Like torch's state_dict(): every parameter by name, plus `lm_head.weight` when it is tied to the embeddings. */
  async state_dict(): Promise<Record<string, Tensor>> {
    const out: Record<string, Tensor> = {};
    for (const [name] of this.named_parameters()) out[name] = await this.get_parameter(name);
    if (this.config.tie_word_embeddings && !('lm_head.weight' in out))
      out['lm_head.weight'] = out['transformer.word_embeddings.weight'];
    return out;
  }

  /**
   * Like torch's load_state_dict: copies values into the parameters. With `strict` (default), missing or unexpected
   * names are an error listing them; shapes must match.
   */
  async load_state_dict(
    state: Record<string, Tensor>,
    options: { strict?: boolean } = {},
  ): Promise<{ missing_keys: string[]; unexpected_keys: string[] }> {
    this.check();
    if (typeof state !== 'object' || state === null || Array.isArray(state))
      throw new PeftNodeError('ERR_INVALID_INPUT', `load_state_dict needs an object of Tensors by name, got ${repr(state)}`);
    for (const [name, t] of Object.entries(state))
      if (typeof t !== 'object' || t === null || !Array.isArray((t as Tensor).dims) || !ArrayBuffer.isView((t as Tensor).data))
        throw new PeftNodeError('ERR_INVALID_INPUT', `load_state_dict: '${name}' must be a Tensor, got ${repr(t)}`);
    const strict = (options ?? {}).strict ?? true;
    const shapes = new Map(this.handle.parameterInfo().map(([n, shape]) => [n, shape] as const));
    const tiedAlias = this.config.tie_word_embeddings ? 'lm_head.weight' : undefined;
    const unexpected = Object.keys(state).filter((k) => !shapes.has(k) && k !== tiedAlias);
    const missing = [...shapes.keys()].filter((k) => !(k in state));
    if (strict && (missing.length || unexpected.length))
      throw new PeftNodeError(
        'ERR_WEIGHT_MISSING',
        `load_state_dict: ` +
          (missing.length ? `missing keys: ${missing.join(', ')}` : '') +
          (missing.length && unexpected.length ? '; ' : '') +
          (unexpected.length ? `unexpected keys: ${unexpected.join(', ')}` : ''),
      );
    for (const [name, t] of Object.entries(state)) {
      const target = name === tiedAlias && !shapes.has(name) ? 'transformer.word_embeddings.weight' : name;
      const shape = shapes.get(target);
      if (!shape) continue;
      if (t.dims.length !== shape.length || t.dims.some((d, i) => d !== shape[i]))
        throw new PeftNodeError(
          'ERR_SHAPE_MISMATCH',
          `load_state_dict: '${name}' has shape [${t.dims}], the model expects [${shape}]`,
        );
      if (!isFloatArray(t.data))
        throw new PeftNodeError('ERR_INVALID_INPUT', `load_state_dict: '${name}' must be float32 or float64`);
      const data = t.data as Float32Array | Float64Array;
      await this.queue.run(() => nativeCall(() => this.handle.setParameter(target, data)));
    }
    return { missing_keys: missing, unexpected_keys: unexpected };
  }

  /** The base model is frozen, so it holds no gradients; kept for torch API parity. */
  zero_grad(): void {
    this.check();
  }

  /** Frees the native weights once pending calls finish. Later calls throw ERR_DISPOSED. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue.run(() => nativeCall(() => this.handle.dispose()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/**
 * transformers' attn_implementation. "eager" (default): transformers' BloomAttention op for op, bit-exact with PEFT.
 * "sdpa": one fused scaled_dot_product_attention with ALiBi + mask as its bias (float32 models; exact mode and other
 * dtypes compute eager): about 5% off a train step on bloom-small, but its rounding differs from eager's (a golden
 * Trainer run's final prefix moved 1.5e-4 from PEFT's; bench/NOTES.md).
 */
export type AttnImplementation = 'eager' | 'sdpa';
const ATTN_IMPLEMENTATIONS: readonly string[] = ['eager', 'sdpa'];

export interface FromPretrainedOptions {
  /** "cpu" (default), "cuda", "cuda:N", or "auto" (CUDA when available). */
  device?: string;
  /** "auto" (default, the checkpoint's dtype as transformers 5 does), "float32", "bfloat16", "float16", "float64". */
  dtype?: string;
  /** Alias of `dtype` (transformers' older name). */
  torch_dtype?: string;
  /** "eager" (default) or "sdpa"; see AttnImplementation. */
  attn_implementation?: AttnImplementation;
}

function resolveDevice(device: string): string {
  if (device === 'auto') return native().info().cudaAvailable ? 'cuda' : 'cpu';
  return device;
}
