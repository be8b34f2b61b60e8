/**
 * lib/'s one door to scripts/libtorch/ (plain CommonJS, typed by its index.d.ts), the module that owns which libtorch,
 * from where, the prebuilt layout, the libtorch preload and the child-process test load; it is shared with
 * `npm install` (scripts/install.js), which runs before this TypeScript is compiled. Errors it throws with a libtorch
 * code become PeftNodeErrors here, so the codes stay stable end to end.
 */
import * as lt from '../../scripts/libtorch/index';
import type { LocatedLibtorch } from '../../scripts/libtorch/index';
import { PeftNodeError } from '../errors';

export type {
  Attempt,
  BuildInfo,
  Candidate,
  CandidateKind,
  InstallRecord,
  LocatedLibtorch,
  RuntimeLibtorch,
  TestLoadResult,
} from '../../scripts/libtorch/index';

/** Package root: holds build/, prebuilds/, native/, scripts/ (and lib/ or dist/). */
export const PACKAGE_ROOT: string = lt.PACKAGE_ROOT;
export const PINNED_VERSION: string = lt.PINNED_VERSION;

export const {
  cacheBase,
  cudaLibrarySearchDirs,
  defaultVerdictDir,
  locateLibtorch,
  main: libtorchCli,
  nativeSourceHash,
  pickBinary,
  platformTag,
  preloadLibtorch,
  prebuiltCandidate,
  prebuiltDir,
  prebuiltVariants,
  readJson,
  realpath,
  testLoad,
  variantMatches,
} = lt;

function withCodes<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === lt.ERR_INVALID || code === lt.ERR_NOT_FOUND) throw new PeftNodeError(code, (err as Error).message, { cause: err });
    throw err;
  }
}

/** PEFT_NODE_LIBTORCH / LIBTORCH, inspected. Throws ERR_LIBTORCH_INVALID when set to something that is not libtorch. */
export function explicitLibtorch(env: NodeJS.ProcessEnv = process.env): LocatedLibtorch | null {
  return withCodes(() => lt.explicitLibtorch({ env }));
}

/**
 * The libtorch a binary built against `version` / `variant` needs, by the run-time search order (never fetching):
 * an explicit PEFT_NODE_LIBTORCH (returned even when it does not fit, so the caller can say so), the libtorch the
 * install used, a Python torch, the cache. `tried` says why each way failed.
 */
export function locateLibtorchFor(
  version: string,
  variant: string,
  opts: { root?: string; env?: NodeJS.ProcessEnv } = {},
): { libtorch: LocatedLibtorch | null; tried: string[] } {
  return withCodes(() => lt.locateLibtorchFor(version, variant, opts));
}
