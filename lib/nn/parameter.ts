/** torch.nn.Parameter for peft-node: a named tensor that lives in native memory, with a reference to its owner. */
import { PeftNodeError } from '../errors';
import { NativeParameterRef } from '../runtime/native';
import { Tensor } from '../tensor';

/**
 * A named tensor of a model. Reading its values touches native memory, hence the Promises. Parameters are what
 * optimizers (AdamW), clip_grad_norm_ and a process group's average_gradients take, like torch's.
 */
export class Parameter {
  constructor(
    readonly name: string,
    readonly shape: number[],
    readonly requires_grad: boolean,
    private readonly read: () => Promise<Tensor>,
    private readonly readGrad: () => Promise<Tensor | null>,
    /** The native module that owns it and its name there (the module may still be being created). */
    private readonly ref: NativeParameterRef | (() => Promise<NativeParameterRef>),
    private readonly write?: (value: Tensor) => Promise<void>,
  ) {}

  /** `with torch.no_grad(): p.copy_(value)`: new values of the same shape (float32 or float64). */
  async copy_(value: Tensor): Promise<void> {
    if (!this.write) throw new PeftNodeError('ERR_INVALID_INPUT', `parameter '${this.name}' cannot be written`);
    if (!(value instanceof Tensor) || value.dims.join() !== this.shape.join())
      throw new PeftNodeError('ERR_SHAPE_MISMATCH', `copy_ into '${this.name}' [${this.shape}] needs a Tensor of that shape, got ${value instanceof Tensor ? `[${value.dims}]` : typeof value}`);
    await this.write(value);
  }

  /** @internal */
  async native_ref(): Promise<NativeParameterRef> {
    return typeof this.ref === 'function' ? this.ref() : this.ref;
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  data(): Promise<Tensor> {
    return this.read();
  }

  grad(): Promise<Tensor | null> {
    return this.readGrad();
  }
}

/** @internal The native references of a parameter list, for the calls that take one (optimizers, collectives). */
export async function native_refs(parameters: Iterable<Parameter>, what: string): Promise<NativeParameterRef[]> {
  const list = [...parameters];
  for (const p of list)
    if (!(p instanceof Parameter)) throw new PeftNodeError('ERR_INVALID_INPUT', `${what} takes Parameters (model.parameters()), got ${typeof p}`);
  return Promise.all(list.map((p) => p.native_ref()));
}
