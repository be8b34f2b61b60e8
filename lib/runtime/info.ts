/** What the loaded addon runs on: libtorch version, CUDA, threads. */
import { native, NativeInfo } from './native';

export function runtime_info(): NativeInfo {
  return native().info();
}
