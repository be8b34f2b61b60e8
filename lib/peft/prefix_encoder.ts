/**
 * PrefixEncoder: PEFT's trainable prefix store (peft/tuners/prefix_tuning/model.py), held in native memory.
 * Embedding(P, 2·L·D), or with prefix_projection Embedding(P, D) -> Linear(D, E) -> Tanh -> Linear(E, 2·L·D).
 * Its output is the base model's past_key_values (get_prompt); optimizers reach its parameters as Parameters.
 */
import '../runtime/dispose_polyfill';
import { PastKeyValues } from '../cache_utils';
import { PeftNodeError, nativeCall } from '../errors';
import { Parameter } from '../nn/parameter';
import type { BloomForCausalLM } from '../models/bloom/modeling_bloom';
import { native, NativePrefixEncoder } from '../runtime/native';
import { withGlobalGenerator } from '../runtime/rng';
import { SerialQueue } from '../runtime/serial_queue';
import { Tensor, isFloatArray } from '../tensor';

export interface PrefixEncoderOptions {
  num_virtual_tokens: number;
  num_layers: number;
  token_dim: number;
  encoder_hidden_size?: number;
  prefix_projection?: boolean;
  /** PEFT builds a plain Embedding(P, 2·L·D) for adapters loaded for inference, even when they were projected. */
  inference_mode?: boolean;
  /** init_weights: "zero" (PEFT >= 0.19): zero the last layer. */
  zero_init?: boolean;
  device?: string;
  /** The model it is made for: its work then runs on that model's thread (one malloc arena for both). */
  model?: BloomForCausalLM;
}

export class PrefixEncoder {
  /** @internal */
  readonly handle: NativePrefixEncoder;
  /** @internal calls on this encoder, in call order */
  readonly queue = new SerialQueue();
  private disposed = false;

  private constructor(handle: NativePrefixEncoder) {
    this.handle = handle;
  }

  /** Creates the modules with torch's default initialisation, drawn from the global generator (see `set_seed`). */
  static async create(opts: PrefixEncoderOptions): Promise<PrefixEncoder> {
    const handle = await withGlobalGenerator(() =>
      nativeCall(() =>
        native().PrefixEncoder.create({
          numVirtualTokens: opts.num_virtual_tokens,
          numLayers: opts.num_layers,
          tokenDim: opts.token_dim,
          encoderHiddenSize: opts.encoder_hidden_size ?? opts.token_dim,
          prefixProjection: opts.prefix_projection ?? false,
          inferenceMode: opts.inference_mode ?? false,
          zeroInit: opts.zero_init ?? false,
          device: opts.device ?? 'cpu',
          model: opts.model?.native_module(),
        }),
      ),
    );
    return new PrefixEncoder(handle);
  }

  private check(): void {
    if (this.disposed) throw new PeftNodeError('ERR_DISPOSED', 'this prefix encoder was disposed');
  }

  get num_virtual_tokens(): number {
    this.check();
    return this.handle.options().numVirtualTokens;
  }

  /** [name, shape] of each parameter, PEFT's names relative to the encoder (`embedding.weight`, `transform.0.weight`…). */
  parameter_shapes(): [string, number[]][] {
    this.check();
    return this.handle.parameterInfo().map(([n, shape]) => [n, shape]);
  }

  /** Its parameters (all trainable), names relative to the encoder. */
  named_parameters(): [string, Parameter][] {
    return this.parameter_shapes().map(([n, shape]) => [
      n,
      new Parameter(n, shape, true, () => this.get_parameter(n), () => this.get_grad(n), [this.handle, n], (t) => this.set_parameter(n, t)),
    ]);
  }

  async get_parameter(name: string): Promise<Tensor> {
    this.check();
    const shape = this.parameter_shapes().find(([n]) => n === name)?.[1];
    const data = await this.queue.run(() => nativeCall(() => this.handle.getParameter(name)));
    return new Tensor('float32', data, shape ?? [data.length]);
  }

  async get_grad(name: string): Promise<Tensor | null> {
    this.check();
    const shape = this.parameter_shapes().find(([n]) => n === name)?.[1];
    const data = await this.queue.run(() => nativeCall(() => this.handle.getGrad(name)));
    return data ? new Tensor('float32', data, shape ?? [data.length]) : null;
  }

  async set_parameter(name: string, value: Tensor | Float32Array): Promise<void> {
    this.check();
    const data = value instanceof Tensor ? value.data : value;
    if (!isFloatArray(data))
      throw new PeftNodeError('ERR_INVALID_INPUT', `value for '${name}' must be float32 or float64`);
    await this.queue.run(() => nativeCall(() => this.handle.setParameter(name, data)));
  }

  async zero_grad(): Promise<void> {
    this.check();
    await this.queue.run(() => nativeCall(() => this.handle.zeroGrad()));
  }

  /**
   * PEFT's get_prompt(batch_size): the prefix for `batch_size` rows as past_key_values. With `requires_grad` a
   * backward through the model that takes them accumulates into this encoder's parameters.
   */
  async get_prompt(batch_size: number, options: { requires_grad?: boolean } = {}): Promise<PastKeyValues> {
    this.check();
    const handle = await this.queue.run(() => nativeCall(() => this.handle.getPrompt(batch_size, options.requires_grad ?? false)));
    return new PastKeyValues(handle);
  }

  /** PEFT's get_prompt_embedding_to_save: the float32 [P, 2·L·D] prefix (the MLP output when projecting). */
  async prompt_embeddings(): Promise<Tensor> {
    this.check();
    const { numVirtualTokens } = this.handle.options();
    const data = await this.queue.run(() => nativeCall(() => this.handle.promptEmbeddings()));
    return new Tensor('float32', data, [numVirtualTokens, data.length / numVirtualTokens]);
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue.run(() => nativeCall(() => this.handle.dispose()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
