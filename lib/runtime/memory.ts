/**
 * Allocation guard: a request whose result cannot possibly fit is refused with ERR_OUT_OF_MEMORY before anything is
 * allocated. Past the physical memory an allocation either fails (fine: libtorch throws) or, with Linux overcommit,
 * succeeds and the process is OOM-killed later while touching it — which is what this check prevents. Only sizes
 * that are certain are counted (what the call returns, a KV cache that must hold every position), so nothing that
 * fits is ever refused; the native code's own peak (attention scores, activations) is on top of that.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { PeftNodeError } from '../errors';
import { native } from './native';

/** The longest typed array V8 makes (elements): results beyond it cannot be returned to JavaScript at all. */
export const MAX_TYPED_ARRAY_LENGTH = 2 ** 32;

let limitCache: number | undefined;

/** Bytes this process can use on the CPU: physical memory, or a lower cgroup limit (containers). */
export function cpu_memory_limit(): number {
  if (limitCache !== undefined) return limitCache;
  let limit = os.totalmem();
  for (const file of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    try {
      const v = Number(fs.readFileSync(file, 'utf8').trim());
      if (Number.isFinite(v) && v > 0 && v < limit) limit = v;
    } catch {
      // not a cgroup (v1/v2) system, or "max"
    }
  }
  return (limitCache = limit);
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(bytes < 2 ** 30 ? 3 : 1)} GiB`;
}

/**
 * Throws ERR_OUT_OF_MEMORY when `bytes` (certainly needed by `what`) exceed the CPU's memory, or when a result of
 * `elements` values is longer than a JavaScript typed array can be. `device` other than "cpu": only the second check
 * (GPU memory is not known here; CUDA's own out-of-memory errors also surface as ERR_OUT_OF_MEMORY).
 */
export function check_allocation(what: string, bytes: number, device: string, hint: string, elements?: number): void {
  if (elements !== undefined && elements > MAX_TYPED_ARRAY_LENGTH)
    throw new PeftNodeError(
      'ERR_OUT_OF_MEMORY',
      `${what} would return ${elements.toExponential(3)} values, more than a JavaScript typed array holds (2^32); ${hint}`,
    );
  if (device !== 'cpu') return;
  const limit = cpu_memory_limit();
  if (bytes > limit)
    throw new PeftNodeError('ERR_OUT_OF_MEMORY', `${what} needs at least ${gib(bytes)}, more than this machine's ${gib(limit)} of memory; ${hint}`);
}

/** Bytes per element of a model dtype name. */
export function dtype_bytes(dtype: string): number {
  return dtype === 'float64' ? 8 : dtype === 'float16' || dtype === 'bfloat16' ? 2 : 4;
}

/**
 * Bytes the process's C heap holds in use (glibc's mallinfo2: every arena's allocated chunks plus mmapped blocks):
 * libtorch's tensors, the addon's objects and Node's ArrayBuffers. Null where the C library does not say (musl,
 * glibc < 2.33). Unlike RSS it does not move when the allocator trims or fragments, so a leak shows as its slope.
 */
export function malloc_in_use_bytes(): number | null {
  return native().mallocInUse();
}
