/**
 * Loading the addon into this process: resolve (./candidates: each candidate test-loaded in a child first), preload
 * the chosen prebuilt's libtorch (scripts/libtorch/preload.js), require it. What lib/runtime/native.ts calls on first
 * use, and what `peft-node doctor` asks about.
 */
import { PeftNodeError } from '../errors';
import { LoaderOptions, Resolution, resolveAddon } from './candidates';
import { CandidateKind, RuntimeLibtorch, preloadLibtorch } from './libtorch';
import { loadError } from './load_error';

export interface LoadedAddon<T> {
  addon: T;
  resolution: Resolution;
}

let lastLoad: { file: string; kind: CandidateKind; libtorch: RuntimeLibtorch | null; resolution: Resolution } | null = null;

/** Which binary this process loaded (null before the first load): for `peft-node doctor`. */
export function loadedAddon(): typeof lastLoad {
  return lastLoad;
}

/**
 * Resolves (see resolveAddon), preloads the chosen binary's libtorch when it is a prebuilt, and requires it.
 * Throws ERR_LIBTORCH_NOT_FOUND / ERR_ADDON_LOAD / ERR_LIBTORCH_INVALID with every candidate tried and how to fix it.
 */
export function loadAddon<T>(opts: LoaderOptions = {}): LoadedAddon<T> {
  const env = opts.env ?? process.env;
  let res: Resolution;
  try {
    res = resolveAddon(opts);
  } catch (err) {
    if (err instanceof PeftNodeError) throw err;
    throw new PeftNodeError('ERR_ADDON_LOAD', `peft-node's native addon could not be resolved: ${(err as Error).message}`, { cause: err });
  }
  const c = res.chosen;
  if (!c) throw loadError(res, opts);
  try {
    if (c.preload) preloadLibtorch(c.preload, env);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const addon = require(c.file) as T;
    lastLoad = { file: c.file, kind: c.kind, libtorch: c.preload, resolution: res };
    return { addon, resolution: res };
  } catch (err) {
    const a = res.attempts.find((x) => x.file === c.file && x.ok);
    if (a) Object.assign(a, { ok: false, reason: `${a.reason ? `${a.reason}; ` : ''}passed its test load but failed here: ${(err as Error).message}` });
    throw loadError(res, opts, err);
  }
}
