/**
 * past_key_values: the key/value prefix of every layer, as transformers' models take it and PEFT's prompt-learning
 * models pass it (PeftModel.get_prompt). Held natively as one [batch, num_virtual_tokens, 2·n_layer·hidden_size]
 * tensor in PEFT's flat layout (((layer·2 + k/v)·n_head + head)·head_dim + d); each row may carry its own prefix.
 * When an adapter computed it for training, its autograd graph leads back to the adapter's parameters, so a
 * backward through the model that takes it reaches them; use it for one forward, then dispose() it (or let the PEFT
 * model do both, as forward() does).
 */
import './runtime/dispose_polyfill';
import { PeftNodeError, nativeCall, rethrowNative } from './errors';
import { native, NativePastKeyValues } from './runtime/native';
import { Tensor, isFloatArray, typedArrayKind } from './tensor';

export class PastKeyValues implements AsyncDisposable {
  /** @internal */
  readonly handle: NativePastKeyValues;
  /** [batch, num_virtual_tokens, 2·n_layer·hidden_size] */
  readonly dims: number[];
  private disposed = false;

  /** @internal made by a PEFT model's get_prompt() or PastKeyValues.from_prefix() */
  constructor(handle: NativePastKeyValues) {
    this.handle = handle;
    this.dims = handle.dims();
  }

  get batch_size(): number {
    return this.dims[0];
  }

  get num_virtual_tokens(): number {
    return this.dims[1];
  }

  /**
   * From a raw prefix [num_virtual_tokens, 2·n_layer·hidden_size] (float32 or float64), looked up for each of
   * `batch_size` rows as PEFT's prefix embedding is; or from a [batch, num_virtual_tokens, 2·n_layer·hidden_size]
   * tensor, one prefix per row (rows of different adapters in one batch). With `requires_grad`, a backward through
   * the model that takes it leaves the prefix's gradient in `grad()`.
   */
  static from_prefix(prefix: Tensor | Float32Array | Float64Array, width: number, options: { batch_size?: number; requires_grad?: boolean } = {}): PastKeyValues {
    const data = prefix instanceof Tensor ? prefix.data : prefix;
    if (!isFloatArray(data)) throw new PeftNodeError('ERR_INVALID_INPUT', 'prefix must be float32 or float64');
    const perRow = prefix instanceof Tensor && prefix.dims.length === 3;
    const dimsOk = !(prefix instanceof Tensor) || (prefix.dims.length === 2 && prefix.dims[1] === width) || (perRow && prefix.dims[2] === width && prefix.dims[1] > 0);
    if (data.length === 0 || data.length % width !== 0 || !dimsOk)
      throw new PeftNodeError(
        'ERR_SHAPE_MISMATCH',
        `prefix must have shape [num_virtual_tokens, ${width}] or [batch, num_virtual_tokens, ${width}] (2 · n_layer · hidden_size), got ` +
          (prefix instanceof Tensor ? `[${prefix.dims}]` : `${data.length} values`),
      );
    const batch = perRow ? (prefix as Tensor).dims[0] : (options.batch_size ?? 1);
    if (!Number.isSafeInteger(batch) || batch < 1) throw new PeftNodeError('ERR_INVALID_INPUT', `batch_size must be a positive integer, got ${batch}`);
    const P = perRow ? (prefix as Tensor).dims[1] : data.length / width;
    try {
      return new PastKeyValues(native().PastKeyValues.fromPrefix(data, P, batch, options.requires_grad ?? false, perRow));
    } catch (err) {
      rethrowNative(err);
    }
  }

  /** The gradient of the raw prefix it was made from (same shape and dtype), or null before a backward. */
  async grad(): Promise<Tensor | null> {
    this.check();
    const g = await nativeCall(() => this.handle.grad());
    if (!g) return null;
    return new Tensor(typedArrayKind(g) === 'Float64Array' ? 'float64' : 'float32', g, g.length === this.dims[1] * this.dims[2] ? [this.dims[1], this.dims[2]] : this.dims);
  }

  private check(): void {
    if (this.disposed) throw new PeftNodeError('ERR_DISPOSED', 'these past_key_values were disposed');
  }

  /** Frees the tensors and the autograd graph (the adapter's activations) now. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await nativeCall(() => this.handle.dispose());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
