/** What the loaded addon runs on: libtorch version, CUDA, threads. */
import { native, NativeInfo } from './native';

export function runtime_info(): NativeInfo {
  return native().info();
}

/** Intra-op threads for libtorch work (torch.set_num_threads); applies to every later call. */
export function set_num_threads(n: number): void {
  native().setNumThreads(n);
}
