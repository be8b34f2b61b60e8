/** torch.nn.utils.clip_grad_norm_ over Parameters of any native modules (native/core/adamw.cpp, op for op). */
import { PeftNodeError, nativeCall } from '../errors';
import { Parameter, native_refs } from '../nn/parameter';
import { native } from '../runtime/native';

/**
 * Scales the gradients of `parameters` so that their total 2-norm is at most `max_norm` (coefficient
 * max_norm / (norm + 1e-6), clamped to 1), as torch does; resolves with the norm before clipping (what HF logs as
 * grad_norm). Parameters without a gradient are skipped.
 */
export async function clip_grad_norm_(parameters: Iterable<Parameter>, max_norm: number): Promise<number> {
  if (typeof max_norm !== 'number' || !(max_norm > 0) || !Number.isFinite(max_norm))
    throw new PeftNodeError('ERR_INVALID_INPUT', `clip_grad_norm_: max_norm must be a finite number > 0, got ${max_norm}`);
  return grad_norm_and_clip(parameters, max_norm);
}

/** @internal The total gradient norm; clipped to `max_norm` when it is > 0 (HF clips only then). */
export async function grad_norm_and_clip(parameters: Iterable<Parameter>, max_norm: number): Promise<number> {
  const refs = await native_refs(parameters, 'clip_grad_norm_');
  return nativeCall(() => native().clipGradNorm(refs, max_norm));
}
