// Types of scripts/libtorch/ (index.js) for lib/runtime and lib/cli: the JS is the implementation (it must run from
// `npm install` before the TypeScript is compiled); this file is the contract the TypeScript side compiles against.

/** A libtorch as the loader needs it. */
export interface RuntimeLibtorch {
  root: string;
  libDir: string;
  version: string | null;
  fullVersion: string | null;
  variant: string;
  cuda: boolean;
  /** Which step of the search order found it: env | install-record | python | cache | fetched */
  source: string;
}

/** What every step of the search order returns. */
export interface LocatedLibtorch extends RuntimeLibtorch {
  torchDir: string;
  includeDirs: string[];
  compileDefinitions: string[];
}

/** inspectLibtorch: a directory read without loading anything. */
export interface LibtorchInfo {
  root: string;
  ok: boolean;
  problem: string | null;
  version: string | null;
  fullVersion: string | null;
  variant: string;
  cuda: boolean;
}

export interface LocateOptions {
  env?: NodeJS.ProcessEnv;
  /** X.Y.Z (default: the pin) */
  version?: string;
  /** cpu, cu126, ... (default: PEFT_NODE_VARIANT, else cpu) */
  variant?: string;
  /** default <cacheBase>/libtorch */
  cacheRoot?: string;
  /** build time only (default: true unless PEFT_NODE_NO_FETCH=1) */
  allowFetch?: boolean;
  log?: (msg: string) => void;
  pythons?: string[];
}

/** prebuilds/<platform>-<arch>-<variant>/build-info.json, written by scripts/prebuild.js. */
export interface BuildInfo {
  name: string;
  packageVersion?: string;
  file: string;
  platform: string;
  arch: string;
  variant: string;
  libtorch: { version: string; fullVersion?: string | null; variant: string; cuda?: boolean };
  napiVersion?: number;
  sourceHash?: string;
  compiler?: string;
  git?: string | null;
  glibc?: { builtOn?: string | null; required?: string | null; glibcxxRequired?: string | null };
  date?: string;
  size?: number;
  sha256?: string;
}

/** What build/peft-node-install.json records (scripts/install.js). */
export interface InstallRecord {
  addon: 'prebuilt' | 'local';
  file?: string;
  variant?: string;
  libtorch?: { root: string; version?: string; fullVersion?: string | null; variant?: string; source?: string };
  date?: string;
}

export type CandidateKind = 'env' | 'local' | 'prebuilt';

export interface Attempt {
  kind: CandidateKind;
  file: string;
  ok: boolean;
  /** Why it was not used (ok: false), or a note. */
  reason?: string;
  /** libtorch not found was the reason (decides between ERR_LIBTORCH_NOT_FOUND and ERR_ADDON_LOAD). */
  libtorchMissing?: boolean;
  /** The verdict came from the cache (no child process). */
  cached?: boolean;
}

export interface Candidate {
  kind: CandidateKind;
  file: string;
  /** libtorch to load before the addon (prebuilts); null: the binary finds its own (RUNPATH). */
  preload: RuntimeLibtorch | null;
  /** libtorch version the binary must report (info().torchVersion), when known. */
  expectVersion: string | null;
  variant: string | null;
  buildInfo?: BuildInfo;
}

export interface TestLoadOptions {
  env?: NodeJS.ProcessEnv;
  /** Where verdicts are cached (default <cacheBase>/addon-checks; null: no cache). */
  verdictDir?: string | null;
  /** Child test-load timeout (ms). */
  timeoutMs?: number;
}

export interface TestLoadResult {
  ok: boolean;
  reason?: string;
  info?: Record<string, unknown>;
  cached?: boolean;
}

export const PACKAGE_ROOT: string;
export const PINNED_VERSION: string;
export const PINNED_VARIANT: string;
export const MARKER: string;
export const ERR_NOT_FOUND: 'ERR_LIBTORCH_NOT_FOUND';
export const ERR_INVALID: 'ERR_LIBTORCH_INVALID';

export function readJson<T = unknown>(file: string): T | null;
/** Equal variants, or CUDA on both sides where one CUDA version is unknown ("cuda"). */
export function variantMatches(wanted: string, found: string | null | undefined): boolean;
/** PEFT_NODE_VARIANT (or PEFT_NODE_LIBTORCH_VARIANT), else cpu. */
export function envVariant(env?: NodeJS.ProcessEnv): string;
/** ${PEFT_NODE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/peft-node} */
export function cacheBase(env?: NodeJS.ProcessEnv): string;
export function defaultCacheRoot(env?: NodeJS.ProcessEnv): string;
export function defaultVerdictDir(env?: NodeJS.ProcessEnv): string;
export function resolveRoot(fs: unknown, dir: string): string | null;
export function inspectLibtorch(root: string): LibtorchInfo;
export function cachedVersions(cacheRoot: string, variant: string): string[];

/** Build time: the search order with fetch (locate.js). Rejects with code ERR_LIBTORCH_NOT_FOUND / ERR_LIBTORCH_INVALID. */
export function locateLibtorch(opts?: LocateOptions): Promise<LocatedLibtorch>;
/** Run time: the same order, synchronous, with the install record and without fetch. Throws ERR_LIBTORCH_INVALID. */
export function locateLibtorchSync(opts?: LocateOptions & { installRecord?: string }): { libtorch: LocatedLibtorch | null; tried: string[] };
/** PEFT_NODE_LIBTORCH / LIBTORCH inspected, or null when unset. Throws ERR_LIBTORCH_INVALID when it is not libtorch. */
export function explicitLibtorch(opts?: { env?: NodeJS.ProcessEnv }): LocatedLibtorch | null;
/** locateLibtorchSync for a binary's libtorch, with <root>/build/peft-node-install.json as the install record. */
export function locateLibtorchFor(
  version: string,
  variant: string,
  opts?: { root?: string; env?: NodeJS.ProcessEnv },
): { libtorch: LocatedLibtorch | null; tried: string[] };
export function installLibtorch(opts?: LocateOptions): Promise<LocatedLibtorch>;

export function platformTag(): string;
export function prebuiltDir(root: string, variant: string): string;
export function prebuiltVariants(root?: string): string[];
/** The binary node-gyp-build 4.8's rules pick in a variant dir. */
export function pickBinary(dir: string): string | null;
/** sha256 over native/core and native/binding: what a binary was compiled from (null without sources). */
export function nativeSourceHash(root?: string): string | null;
/** The prebuilt for a variant and why it does (not) fit; libtorch located for it when not given. */
export function prebuiltCandidate(
  variant: string,
  opts?: { root?: string; env?: NodeJS.ProcessEnv; libtorch?: RuntimeLibtorch | null },
): { candidate: Candidate | null; attempt: Attempt };

/** Where a pip CUDA torch's runtime libraries are: the nvidia-* wheels beside torch/, then a CUDA toolkit. */
export function cudaLibrarySearchDirs(lt: { root: string; libDir: string }, env?: NodeJS.ProcessEnv): string[];
/** fs.realpathSync, or the resolved path when it does not exist. */
export function realpath(p: string): string;
/** Loads the libtorch a prebuilt needs into this process, once. Throws when another libtorch is already loaded. */
export function preloadLibtorch(lt: { root: string; libDir: string; cuda?: boolean }, env?: NodeJS.ProcessEnv): void;
/** Loads the candidate in a child `node` (its libtorch preloaded); passing verdicts are cached. */
export function testLoad(c: Candidate, opts?: TestLoadOptions): TestLoadResult;

/** The CLI: `node scripts/libtorch.js locate|install ...`; resolves the exit code. */
export function main(argv: string[]): Promise<number>;
