/** What the loaded addon runs on: libtorch version, CUDA, threads. */
import { native, NativeInfo } from './native';

export function runtime_info(): NativeInfo {
  return native().info();
}

/** Intra-op threads for libtorch work (torch.set_num_threads); applies to every later call. */
export function set_num_threads(n: number): void {
  native().setNumThreads(n);
}

/**
 * Exact mode computes transformers' op graph, so results are bit-identical to PEFT + transformers on one thread. The
 * default (fast) mode skips work that cannot change the result beyond rounding — lm_head and cross-entropy only on
 * rows that have a target, nothing vocab-sized kept for backward — and stays within 1e-5 relative of exact mode.
 */
export function set_exact_mode(exact: boolean): void {
  native().setExactMode(exact);
}
