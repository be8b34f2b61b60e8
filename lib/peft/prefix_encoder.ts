/**
 * PrefixEncoder: PEFT's trainable prefix store (peft/tuners/prefix_tuning/model.py), held in native memory.
 * Embedding(P, 2·L·D), or with prefix_projection Embedding(P, D) -> Linear(D, E) -> Tanh -> Linear(E, 2·L·D).
 */
import '../runtime/dispose_polyfill';
import { PeftNodeError, nativeCall } from '../errors';
import { native, NativeOptimizerState, NativePrefixEncoder } from '../runtime/native';
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
}

export class PrefixEncoder {
  /** @internal */
  readonly handle: NativePrefixEncoder;
  /** @internal */
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
        }),
      ),
    );
    return new PrefixEncoder(handle);
  }

  private check(): void {
    if (this.disposed) throw new PeftNodeError('ERR_DISPOSED', 'this prefix encoder was disposed');
  }

  /** [name, shape] of each parameter, PEFT's names relative to the encoder (`embedding.weight`, `transform.0.weight`…). */
  parameter_shapes(): [string, number[]][] {
    this.check();
    return this.handle.parameterInfo().map(([n, shape]) => [n, shape]);
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

  /** PEFT's get_prompt_embedding_to_save: the float32 [P, 2·L·D] prefix (the MLP output when projecting). */
  async prompt_embeddings(): Promise<Tensor> {
    this.check();
    const { numVirtualTokens } = this.handle.options();
    const data = await this.queue.run(() => nativeCall(() => this.handle.promptEmbeddings()));
    return new Tensor('float32', data, [numVirtualTokens, data.length / numVirtualTokens]);
  }

  /**
   * One optimizer update from the accumulated gradients, as HF Trainer does it: clip_grad_norm_ (when
   * max_grad_norm > 0), AdamW (torch's single-tensor algorithm), zero_grad. Returns the pre-clip gradient norm.
   */
  async optimizer_step(options: {
    lr: number;
    betas: [number, number];
    eps: number;
    weight_decay: number[];
    max_grad_norm: number;
  }): Promise<number> {
    this.check();
    return this.queue.run(() =>
      nativeCall(() =>
        this.handle.optimizerStep({
          lr: options.lr,
          beta1: options.betas[0],
          beta2: options.betas[1],
          eps: options.eps,
          weightDecay: options.weight_decay,
          maxGradNorm: options.max_grad_norm,
        }),
      ),
    );
  }

  /** AdamW state (exp_avg, exp_avg_sq, step per parameter), for checkpoints. */
  async get_optimizer_state(): Promise<NativeOptimizerState> {
    this.check();
    return this.queue.run(() => nativeCall(() => this.handle.getOptimizerState()));
  }

  async set_optimizer_state(state: NativeOptimizerState): Promise<void> {
    this.check();
    await this.queue.run(() => nativeCall(() => this.handle.setOptimizerState(state)));
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
