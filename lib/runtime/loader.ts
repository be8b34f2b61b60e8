/**
 * The native addon's loader: which binary, against which libtorch, and how that libtorch gets into the process.
 *
 * Candidates, in this order (the install record, build/peft-node-install.json, puts the prebuilt first when the
 * install chose it):
 *   1. PEFT_NODE_ADDON=<file>: that binary (a prebuilt when a build-info.json lies next to it).
 *   2. The local build, build/Release/peft_node.node (cmake-js or node-gyp), which finds its libtorch by RUNPATH; used
 *      when its stamp (build/peft-node-build.json) fits PEFT_NODE_VARIANT and PEFT_NODE_LIBTORCH.
 *   3. The prebuilt of the wanted variant: prebuilds/<platform>-<arch>-<variant>/<name>.napi.glibc.node (the variant
 *      is a directory, the file is picked by node-gyp-build's tag rules), when its build-info.json was built from the
 *      native sources shipped next to it and the located libtorch has its X.Y.Z version and variant.
 * The wanted variant: PEFT_NODE_VARIANT, else that of an explicit PEFT_NODE_LIBTORCH, else the install record's,
 * else "cpu".
 *
 * Every candidate is test-loaded in a child process before this process trusts it (a bad binary can abort a process:
 * a missing CUDA library, an illegal instruction, a static initialiser throwing). A passing verdict is cached per
 * binary (path, size, mtime), libtorch and Node version in <cache>/addon-checks/, so it is paid once, not per require.
 *
 * A prebuilt has no RUNPATH (the build machine's libtorch path means nothing elsewhere). The located libtorch is
 * loaded first, through process.dlopen with RTLD_NOW | RTLD_NODELETE: process.dlopen rejects a library that is not an
 * addon and dlclose()s it, RTLD_NODELETE keeps it mapped, and the dynamic linker then satisfies the addon's
 * DT_NEEDED libtorch.so / libtorch_cpu.so / libc10.so by SONAME with the libraries already loaded. For a CUDA
 * libtorch from pip wheels, libraries it cannot find (libcudart.so.13, ...) are looked up in the nvidia-* wheels next
 * to it and loaded the same way. (LD_LIBRARY_PATH is read once, at process start, so it cannot be set from here; a
 * library cannot re-exec its host process; an $ORIGIN-relative RUNPATH would need a link into the package.)
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { PeftNodeError } from '../errors';

/** Package root: lib/runtime (ts-jest) and dist/runtime (built) are both two levels down. */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

/** glibc's RTLD_NODELETE (Node's os.constants.dlopen does not list it). */
const RTLD_NODELETE = 0x1000;
const CHECK_FLAG = '--peft-node-check';
const CHECK_PREFIX = 'PEFT_NODE_CHECK ';

// ---------------------------------------------------------------------------------------------------------------
// Types

/** A libtorch as the loader sees it (from scripts/libtorch.js's inspectLibtorch). */
export interface RuntimeLibtorch {
  root: string;
  libDir: string;
  version: string | null;
  fullVersion: string | null;
  variant: string;
  cuda: boolean;
  /** env | install-record | cache | locator (a Python torch, found by scripts/libtorch.js) | stamp */
  source: string;
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

export interface Resolution {
  variant: string;
  variantReason: string;
  chosen: Candidate | null;
  attempts: Attempt[];
  /** Runtime facts the chosen binary reported in its test load (libtorch version, CUDA). */
  info?: Record<string, unknown>;
}

export interface LoaderOptions {
  /** Package root holding build/, prebuilds/, native/, scripts/ (default: this package). */
  root?: string;
  env?: NodeJS.ProcessEnv;
  /** Where verdicts are cached (default <PEFT_NODE_CACHE or ~/.cache/peft-node>/addon-checks; null: no cache). */
  verdictDir?: string | null;
  /** Child test-load timeout (ms). */
  timeoutMs?: number;
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

interface LibtorchScript {
  resolveRoot(fsImpl: typeof fs, dir: string): string | null;
  inspectLibtorch(root: string): {
    root: string;
    ok: boolean;
    problem: string | null;
    version: string | null;
    fullVersion: string | null;
    variant: string | null;
    cuda: boolean;
  };
  defaultCacheRoot(env: NodeJS.ProcessEnv): string;
  PINNED_VERSION: string;
  MARKER: string;
}

function libtorchScript(root: string): LibtorchScript {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(path.join(root, 'scripts', 'libtorch.js')) as LibtorchScript;
}

function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

function exists(p: string): boolean {
  try {
    fs.accessSync(p);
    return true;
  } catch {
    return false;
  }
}

function isCuda(v: string | null | undefined): boolean {
  return v === 'cuda' || /^cu\d+$/.test(String(v));
}

/** Equal variants, or CUDA on both sides where one CUDA version is unknown ("cuda"). */
export function variantMatches(wanted: string, found: string | null | undefined): boolean {
  if (!found) return false;
  if (wanted === found) return true;
  return isCuda(wanted) && isCuda(found) && (wanted === 'cuda' || found === 'cuda');
}

function realpath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

export function platformTag(): string {
  return `${process.platform}-${process.arch}`;
}

/** prebuilds/<platform>-<arch>-<variant> */
export function prebuiltDir(root: string, variant: string): string {
  return path.join(root, 'prebuilds', `${platformTag()}-${variant}`);
}

/** Variants with a prebuilt directory for this platform. */
export function prebuiltVariants(root: string = PACKAGE_ROOT): string[] {
  const prefix = `${platformTag()}-`;
  try {
    return fs
      .readdirSync(path.join(root, 'prebuilds'))
      .filter((d) => d.startsWith(prefix) && d.length > prefix.length)
      .map((d) => d.slice(prefix.length))
      .sort();
  } catch {
    return [];
  }
}

interface GypTags {
  file: string;
}
interface NodeGypBuild {
  parseTags(file: string): GypTags | undefined;
  matchTags(runtime: string, abi: string): (t: GypTags | undefined) => boolean;
  compareTags(runtime: string): (a: GypTags, b: GypTags) => number;
}

/** The subset of node-gyp-build's rules that our file names use (<name>.napi.<glibc|musl>.node). */
const minimalTags: NodeGypBuild = {
  parseTags(file) {
    const parts = file.split('.');
    if (parts.pop() !== 'node') return undefined;
    const libc = parts.find((p) => p === 'glibc' || p === 'musl');
    return { file, libc, specificity: parts.filter((p) => p === 'napi' || p === libc).length } as GypTags;
  },
  matchTags: () => (t) => {
    if (!t) return false;
    const libc = (t as GypTags & { libc?: string }).libc;
    const mine = process.env.LIBC || (fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc');
    return !libc || libc === mine;
  },
  compareTags: () => (a, b) => ((b as GypTags & { specificity: number }).specificity - (a as GypTags & { specificity: number }).specificity),
};

/** The binary node-gyp-build 4.8's rules pick in a variant dir (<name>.<tags>.node; napi, glibc/musl, ...). */
export function pickBinary(dir: string): string | null {
  let files: string[];
  try {
    files = fs.readdirSync(dir);
  } catch {
    return null;
  }
  let ngb: NodeGypBuild;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    ngb = require('node-gyp-build') as NodeGypBuild;
  } catch {
    ngb = minimalTags; // a package copied without its dependencies
  }
  const runtime = 'node';
  const abi = process.versions.modules;
  const winner = files
    .map((f) => ngb.parseTags(f))
    .filter((t): t is GypTags => ngb.matchTags(runtime, abi)(t))
    .sort(ngb.compareTags(runtime))[0];
  return winner ? path.join(dir, winner.file) : null;
}

/**
 * sha256 over native/core and native/binding (relative path + content, sorted): what a binary was compiled from. A
 * prebuilt whose build-info has another hash was built from other sources than the TypeScript next to it expects.
 * null when the package has no native/ sources.
 */
export function nativeSourceHash(root: string = PACKAGE_ROOT): string | null {
  const files: string[] = [];
  const visit = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) visit(p);
      else if (/\.(c|cc|cpp|h|hpp)$/.test(e.name)) files.push(p);
    }
  };
  visit(path.join(root, 'native', 'core'));
  visit(path.join(root, 'native', 'binding'));
  if (!files.length) return null;
  const h = crypto.createHash('sha256');
  for (const f of files.map((p) => path.relative(root, p).split(path.sep).join('/')).sort()) {
    h.update(f).update('\0').update(fs.readFileSync(path.join(root, f))).update('\0');
  }
  return h.digest('hex');
}

function cacheBase(env: NodeJS.ProcessEnv): string {
  if (env.PEFT_NODE_CACHE) return path.resolve(env.PEFT_NODE_CACHE);
  const home = env.HOME || os.homedir();
  return path.join(env.XDG_CACHE_HOME || path.join(home, '.cache'), 'peft-node');
}

export function defaultVerdictDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(cacheBase(env), 'addon-checks');
}

// ---------------------------------------------------------------------------------------------------------------
// Locating libtorch at run time (synchronous: require() is)

function fromInspect(lt: ReturnType<LibtorchScript['inspectLibtorch']>, source: string): RuntimeLibtorch {
  return {
    root: lt.root,
    libDir: path.join(lt.root, 'lib'),
    version: lt.version,
    fullVersion: lt.fullVersion,
    variant: lt.variant || (lt.cuda ? 'cuda' : 'cpu'),
    cuda: lt.cuda,
    source,
  };
}

/** PEFT_NODE_LIBTORCH / LIBTORCH, inspected. Throws ERR_LIBTORCH_INVALID when set to something that is not libtorch. */
export function explicitLibtorch(root: string, env: NodeJS.ProcessEnv): RuntimeLibtorch | null {
  const name = ['PEFT_NODE_LIBTORCH', 'LIBTORCH'].find((n) => env[n]);
  if (!name) return null;
  const script = libtorchScript(root);
  const dir = script.resolveRoot(fs, env[name] as string);
  const info = dir ? script.inspectLibtorch(dir) : null;
  if (!dir || !info || !info.ok) {
    throw new PeftNodeError(
      'ERR_LIBTORCH_INVALID',
      `${name}=${env[name]} is not a libtorch dir (${info?.problem ?? 'no share/cmake/Torch/TorchConfig.cmake in it, in torch/ or libtorch/'}). ` +
        `Point it at an unzipped libtorch or <site-packages>/torch, or unset it.`,
    );
  }
  return fromInspect(info, 'env');
}

/**
 * The libtorch a prebuilt needs (version X.Y.Z, variant), found without fetching: an explicit PEFT_NODE_LIBTORCH
 * (returned even when it does not fit, so the caller can say so), the libtorch the install used, the cache, then
 * scripts/libtorch.js (a Python torch). `tried` says why each way failed.
 */
export function locateLibtorchFor(
  version: string,
  variant: string,
  opts: { root?: string; env?: NodeJS.ProcessEnv } = {},
): { libtorch: RuntimeLibtorch | null; tried: string[] } {
  const root = opts.root ?? PACKAGE_ROOT;
  const env = opts.env ?? process.env;
  const tried: string[] = [];
  const explicit = explicitLibtorch(root, env);
  if (explicit) return { libtorch: explicit, tried };
  tried.push('PEFT_NODE_LIBTORCH / LIBTORCH: not set');
  const script = libtorchScript(root);
  const fits = (lt: RuntimeLibtorch) => lt.version === version && variantMatches(variant, lt.variant);

  const record = readJson<InstallRecord>(path.join(root, 'build', 'peft-node-install.json'));
  if (record?.libtorch?.root) {
    const info = exists(record.libtorch.root) ? script.inspectLibtorch(record.libtorch.root) : null;
    const lt = info && info.ok ? fromInspect(info, 'install-record') : null;
    if (lt && fits(lt)) return { libtorch: lt, tried };
    tried.push(
      `the libtorch the install used, ${record.libtorch.root}: ` +
        (!info ? 'gone' : !info.ok ? String(info.problem) : `libtorch ${lt?.fullVersion ?? lt?.version} (${lt?.variant})`),
    );
  } else {
    tried.push('install record (build/peft-node-install.json): none');
  }

  const cacheDir = path.join(script.defaultCacheRoot(env), `${version}-${variant}`);
  if (exists(path.join(cacheDir, script.MARKER))) {
    const info = script.inspectLibtorch(cacheDir);
    if (info.ok) {
      const lt = fromInspect(info, 'cache');
      const marker = readJson<{ variant?: string }>(path.join(cacheDir, script.MARKER));
      if (marker?.variant) lt.variant = marker.variant;
      if (fits(lt)) return { libtorch: lt, tried };
      tried.push(`cache ${cacheDir}: holds ${lt.fullVersion ?? lt.version} (${lt.variant})`);
    } else {
      tried.push(`cache ${cacheDir}: ${info.problem}`);
    }
  } else {
    tried.push(`cache ${cacheDir}: ${exists(cacheDir) ? 'incomplete (an interrupted fetch)' : 'not present'}`);
  }

  // A Python torch (and anything else scripts/libtorch.js knows), never fetching.
  const r = spawnSync(
    process.execPath,
    [path.join(root, 'scripts', 'libtorch.js'), 'locate', '--no-fetch', '--json', '--version', version, '--variant', variant],
    { encoding: 'utf8', env: { ...env, PEFT_NODE_NO_FETCH: '1' }, timeout: 60_000 },
  );
  if (r.status === 0) {
    try {
      const found = JSON.parse(r.stdout.trim().split('\n').pop() as string) as { root: string; source: string; variant: string };
      const info = script.inspectLibtorch(found.root);
      if (info.ok) {
        const lt = fromInspect(info, found.source === 'python' ? 'python' : 'locator');
        lt.variant = found.variant || lt.variant;
        if (fits(lt)) return { libtorch: lt, tried };
      }
    } catch {
      /* fall through */
    }
  }
  const why = (r.stderr || '').replace(/^peft-node: /, '').split('\n');
  const pythonLine = why.find((l) => /Python torch/.test(l));
  tried.push(pythonLine ? pythonLine.replace(/^\s*\d+\.\s*/, '') : `scripts/libtorch.js locate --no-fetch: ${r.error ? r.error.message : `exit ${r.status}`}`);
  return { libtorch: null, tried };
}

// ---------------------------------------------------------------------------------------------------------------
// Preloading libtorch (prebuilts)

let preloadedLibDir: string | null = null;

function dlopenKeep(file: string, global: boolean): void {
  const c = os.constants.dlopen as Record<string, number>;
  const flags = (c.RTLD_NOW ?? 2) | (global ? (c.RTLD_GLOBAL ?? 0x100) : 0) | RTLD_NODELETE;
  try {
    process.dlopen({ exports: {} } as NodeJS.Module, file, flags);
  } catch (err) {
    // Expected: the library loaded, but it is not an addon (and stays mapped thanks to RTLD_NODELETE).
    if (/did not self-register/.test((err as Error).message)) return;
    throw err;
  }
}

/** Where a pip CUDA torch's runtime libraries are: the nvidia-* wheels beside torch/, then a CUDA toolkit. */
export function cudaLibrarySearchDirs(lt: { root: string; libDir: string }, env: NodeJS.ProcessEnv = process.env): string[] {
  const dirs = [lt.libDir];
  const nvidia = path.resolve(lt.root, '..', 'nvidia');
  const addLibDirs = (base: string, depth: number) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(base, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const p = path.join(base, e.name);
      if (e.name === 'lib' || e.name === 'lib64') dirs.push(p);
      else if (depth > 0) addLibDirs(p, depth - 1);
    }
  };
  addLibDirs(nvidia, 2);
  for (const home of [env.CUDA_HOME, env.CUDA_PATH, '/usr/local/cuda']) {
    if (home) dirs.push(path.join(home, 'lib64'), path.join(home, 'lib'));
  }
  return [...new Set(dirs)].filter(exists);
}

/**
 * dlopen()s `file` (RTLD_NOW | RTLD_NODELETE); each library it needs that the dynamic linker cannot find is looked up
 * in searchDirs and loaded first, by absolute path, until it loads or a library is nowhere (then a clear Error).
 */
function dlopenResolving(file: string, global: boolean, searchDirs: () => string[], seen = new Set<string>()): void {
  for (;;) {
    try {
      dlopenKeep(file, global);
      return;
    } catch (err) {
      const msg = (err as Error).message;
      const m = /(?:^|\s)([^\s:/]+\.so[.\d]*): cannot open shared object file/.exec(msg);
      if (!m || seen.has(m[1])) throw err;
      seen.add(m[1]);
      const dirs = searchDirs();
      const found = dirs.map((d) => path.join(d, m[1])).find(exists);
      if (!found) {
        throw new Error(
          `${path.basename(file)} needs ${m[1]}, found neither by the dynamic linker nor in ${dirs.join(', ') || '(no CUDA library dirs)'}` +
            (/cu|nccl|nvshmem|nvrtc|nvJit/i.test(m[1])
              ? ' (a CUDA libtorch needs the CUDA runtime libraries: pip install the nvidia-* wheels its torch wheel requires, ' +
                'use the official libtorch zip, which bundles them, or add their dir to LD_LIBRARY_PATH)'
              : ''),
        );
      }
      dlopenResolving(found, true, searchDirs, seen);
    }
  }
}

/** Loads the libtorch a prebuilt needs into this process, once. Throws when another libtorch is already loaded. */
export function preloadLibtorch(lt: { root: string; libDir: string; cuda?: boolean }, env: NodeJS.ProcessEnv = process.env): void {
  const libDir = realpath(lt.libDir);
  if (preloadedLibDir === libDir) return;
  if (preloadedLibDir) throw new Error(`another libtorch (${preloadedLibDir}) is already loaded in this process; cannot load ${libDir} too`);
  let dirs: string[] | null = null;
  const searchDirs = () => (dirs ??= cudaLibrarySearchDirs(lt, env));
  // As torch/__init__.py: the CUDA libraries' symbols globally first, then libtorch itself.
  const globalDeps = path.join(libDir, 'libtorch_global_deps.so');
  if (lt.cuda && exists(globalDeps)) dlopenResolving(globalDeps, true, searchDirs);
  for (const lib of ['libc10.so', 'libtorch_cpu.so', ...(lt.cuda ? ['libc10_cuda.so', 'libtorch_cuda.so'] : []), 'libtorch.so']) {
    const file = path.join(libDir, lib);
    if (exists(file)) dlopenResolving(file, false, searchDirs);
  }
  preloadedLibDir = libDir;
}

// ---------------------------------------------------------------------------------------------------------------
// Test load in a child process, with a cached verdict

interface ChildSpec {
  file: string;
  preload: { root: string; libDir: string; cuda: boolean } | null;
}

interface ChildResult {
  ok: boolean;
  error?: string;
  info?: Record<string, unknown>;
}

/** This module as a file a child `node` can run (under ts-jest, the compiled copy in this package's dist/). */
function loaderScript(): string | null {
  if (__filename.endsWith('.js')) return __filename;
  const compiled = path.join(PACKAGE_ROOT, 'dist', 'runtime', 'loader.js');
  return exists(compiled) ? compiled : null;
}

function verdictKey(c: Candidate): string | null {
  let st: fs.Stats;
  try {
    st = fs.statSync(c.file);
  } catch {
    return null;
  }
  const lt = c.preload;
  const parts = [realpath(c.file), st.size, st.mtimeMs, lt ? realpath(lt.root) : '', lt?.fullVersion ?? '', process.version, process.arch];
  return crypto.createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 32);
}

/**
 * Loads the candidate in a child `node` (preloading its libtorch as this process would) and reports what it says
 * (info()). Passing verdicts are cached; failures are not (a missing library may be installed in between).
 */
export function testLoad(
  c: Candidate,
  opts: LoaderOptions = {},
): { ok: boolean; reason?: string; info?: Record<string, unknown>; cached?: boolean } {
  const env = opts.env ?? process.env;
  const dir = opts.verdictDir === undefined ? defaultVerdictDir(env) : opts.verdictDir;
  const key = verdictKey(c);
  if (!key) return { ok: false, reason: 'not found' };
  const verdictFile = dir ? path.join(dir, `${key}.json`) : null;
  if (verdictFile) {
    const v = readJson<{ ok: boolean; info?: Record<string, unknown>; file?: string }>(verdictFile);
    if (v?.ok && v.file === realpath(c.file)) return { ok: true, info: v.info, cached: true };
  }
  const script = loaderScript();
  if (!script) return { ok: false, reason: `cannot test-load: neither ${__filename} as JS nor dist/runtime/loader.js (run npm run build)` };
  const spec: ChildSpec = { file: c.file, preload: c.preload ? { root: c.preload.root, libDir: c.preload.libDir, cuda: c.preload.cuda } : null };
  const r = spawnSync(process.execPath, [script, CHECK_FLAG, JSON.stringify(spec)], {
    encoding: 'utf8',
    env,
    timeout: opts.timeoutMs ?? 120_000,
    maxBuffer: 16 << 20,
  });
  const line = (r.stdout || '').split('\n').find((l) => l.startsWith(CHECK_PREFIX));
  let res: ChildResult | null = null;
  try {
    res = line ? (JSON.parse(line.slice(CHECK_PREFIX.length)) as ChildResult) : null;
  } catch {
    res = null;
  }
  if (!res) {
    const how = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
    const tail = (r.stderr || '').trim().split('\n').slice(-3).join(' | ');
    return { ok: false, reason: `test load crashed (${how})${tail ? `: ${tail}` : ''}` };
  }
  if (!res.ok) return { ok: false, reason: `test load failed: ${res.error}` };
  const got = res.info && typeof res.info.torchVersion === 'string' ? (res.info.torchVersion as string) : null;
  if (c.expectVersion && got && got.split('+')[0] !== c.expectVersion) {
    return { ok: false, reason: `it runs libtorch ${got}, but was built for ${c.expectVersion}`, info: res.info };
  }
  if (verdictFile) {
    try {
      fs.mkdirSync(path.dirname(verdictFile), { recursive: true });
      const tmp = `${verdictFile}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, `${JSON.stringify({ ok: true, file: realpath(c.file), info: res.info, date: new Date().toISOString() })}\n`);
      fs.renameSync(tmp, verdictFile);
    } catch {
      /* a read-only cache only costs a child process per load */
    }
  }
  return { ok: true, info: res.info };
}

function childMain(specJson: string): void {
  const out = (r: ChildResult) => process.stdout.write(`${CHECK_PREFIX}${JSON.stringify(r)}\n`);
  try {
    const spec = JSON.parse(specJson) as ChildSpec;
    if (spec.preload) preloadLibtorch(spec.preload);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const m = require(spec.file) as { info?: () => Record<string, unknown> };
    const info = typeof m.info === 'function' ? m.info() : {};
    delete info.parallelInfo;
    out({ ok: true, info });
  } catch (err) {
    out({ ok: false, error: ((err as Error).message || String(err)).split('\n').slice(0, 4).join(' | ') });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Candidates

/** The variant to load: PEFT_NODE_VARIANT, an explicit libtorch's, the install record's, else cpu. */
export function wantedVariant(opts: LoaderOptions = {}): { variant: string; reason: string } {
  const root = opts.root ?? PACKAGE_ROOT;
  const env = opts.env ?? process.env;
  if (env.PEFT_NODE_VARIANT) return { variant: env.PEFT_NODE_VARIANT, reason: 'PEFT_NODE_VARIANT' };
  let explicit: RuntimeLibtorch | null = null;
  try {
    explicit = explicitLibtorch(root, env);
  } catch {
    /* reported when a candidate needs it */
  }
  if (explicit) return { variant: explicit.variant, reason: `the libtorch in ${env.PEFT_NODE_LIBTORCH ? 'PEFT_NODE_LIBTORCH' : 'LIBTORCH'}` };
  const record = readJson<InstallRecord>(path.join(root, 'build', 'peft-node-install.json'));
  if (record?.variant) return { variant: record.variant, reason: 'the install record' };
  return { variant: 'cpu', reason: 'default' };
}

/** The prebuilt for a variant and why it does (not) fit; libtorch located for it when it does. */
export function prebuiltCandidate(
  variant: string,
  opts: LoaderOptions & { libtorch?: RuntimeLibtorch | null } = {},
): { candidate: Candidate | null; attempt: Attempt } {
  const root = opts.root ?? PACKAGE_ROOT;
  const dir = prebuiltDir(root, variant);
  const file = pickBinary(dir);
  const fail = (reason: string, extra: Partial<Attempt> = {}) => ({
    candidate: null,
    attempt: { kind: 'prebuilt' as const, file: file ?? dir, ok: false, reason, ...extra },
  });
  if (!file) {
    const others = prebuiltVariants(root).filter((v) => v !== variant);
    return fail(`no prebuilt for ${platformTag()}-${variant}${others.length ? ` (there are: ${others.join(', ')})` : ''}`);
  }
  const info = readJson<BuildInfo>(path.join(dir, 'build-info.json'));
  if (!info || !info.libtorch?.version) return fail(`${path.join(dir, 'build-info.json')} is missing or unreadable`);
  if (info.variant && info.variant !== variant) return fail(`build-info.json says variant ${info.variant}, the directory ${variant}`);
  if (info.sourceHash) {
    const here = nativeSourceHash(root);
    if (here && here !== info.sourceHash) {
      return fail('built from other native sources than these (a stale prebuilt: run `npm run build:prebuilt`)');
    }
  }
  let lt: RuntimeLibtorch | null | undefined = opts.libtorch;
  let tried: string[] = [];
  if (lt === undefined) {
    try {
      ({ libtorch: lt, tried } = locateLibtorchFor(info.libtorch.version, info.libtorch.variant || variant, opts));
    } catch (err) {
      return fail((err as Error).message, { libtorchMissing: true });
    }
  }
  const need = `libtorch ${info.libtorch.version} (${info.libtorch.variant || variant})`;
  if (!lt) return fail(`needs ${need}, not found: ${tried.join('; ')}`, { libtorchMissing: true });
  if (lt.version !== info.libtorch.version || !variantMatches(info.libtorch.variant || variant, lt.variant)) {
    return fail(`needs ${need}, but the libtorch found (${lt.source}: ${lt.root}) is ${lt.fullVersion ?? lt.version} (${lt.variant})`, {
      libtorchMissing: true,
    });
  }
  return {
    candidate: { kind: 'prebuilt', file, preload: lt, expectVersion: info.libtorch.version, variant, buildInfo: info },
    attempt: { kind: 'prebuilt', file, ok: true, reason: `${need} from ${lt.source}: ${lt.root}` },
  };
}

function localCandidate(variant: string, variantReason: string, opts: LoaderOptions): { candidate: Candidate | null; attempt: Attempt } {
  const root = opts.root ?? PACKAGE_ROOT;
  const env = opts.env ?? process.env;
  const release = path.join(root, 'build', 'Release');
  let file: string | null = null;
  try {
    const f = fs.readdirSync(release).find((n) => n.endsWith('.node'));
    if (f) file = path.join(release, f);
  } catch {
    /* no build */
  }
  const fail = (reason: string) => ({ candidate: null, attempt: { kind: 'local' as const, file: file ?? release, ok: false, reason } });
  if (!file) return fail('not built (no build/Release/*.node)');
  const stamp = readJson<{ libtorch?: { root?: string; version?: string; variant?: string } }>(path.join(root, 'build', 'peft-node-build.json'));
  const built = stamp?.libtorch;
  if (built?.variant && variantReason !== 'default' && variantReason !== 'the install record' && !variantMatches(variant, built.variant)) {
    return fail(`built for ${built.variant}, ${variantReason} wants ${variant}`);
  }
  let explicit: RuntimeLibtorch | null = null;
  try {
    explicit = explicitLibtorch(root, env);
  } catch {
    /* an invalid explicit dir does not concern a build with its own RUNPATH */
  }
  if (explicit && built?.root && realpath(built.root) !== realpath(explicit.root)) {
    return fail(`built against ${built.root}, but PEFT_NODE_LIBTORCH/LIBTORCH is ${explicit.root} (rebuild: npm run build:native)`);
  }
  return {
    candidate: { kind: 'local', file, preload: null, expectVersion: built?.version ?? null, variant: built?.variant ?? null },
    attempt: { kind: 'local', file, ok: true, reason: built ? `built against libtorch ${built.version} (${built.variant}) at ${built.root}` : 'no build stamp' },
  };
}

/**
 * Decides which binary to load (test-loading each candidate in a child until one passes), without loading anything
 * into this process. What `peft-node doctor` reports.
 */
export function resolveAddon(opts: LoaderOptions = {}): Resolution {
  const root = opts.root ?? PACKAGE_ROOT;
  const env = opts.env ?? process.env;
  const { variant, reason: variantReason } = wantedVariant(opts);
  const attempts: Attempt[] = [];
  const done = (c: Candidate | null, info?: Record<string, unknown>): Resolution => ({ variant, variantReason, chosen: c, attempts, info });

  if (env.PEFT_NODE_ADDON) {
    const file = path.resolve(env.PEFT_NODE_ADDON);
    const info = readJson<BuildInfo>(path.join(path.dirname(file), 'build-info.json'));
    if (!exists(file)) {
      attempts.push({ kind: 'env', file, ok: false, reason: 'PEFT_NODE_ADDON names a file that does not exist' });
      return done(null);
    }
    const c: Candidate = { kind: 'env', file, preload: null, expectVersion: null, variant: null };
    if (info?.libtorch?.version) {
      // A prebuilt (no RUNPATH): it needs its libtorch loaded first, as any prebuilt.
      const want = info.libtorch.variant || info.variant;
      const { libtorch, tried } = locateLibtorchFor(info.libtorch.version, want, { root, env });
      if (!libtorch || libtorch.version !== info.libtorch.version || !variantMatches(want, libtorch.variant)) {
        const need = `libtorch ${info.libtorch.version} (${want})`;
        attempts.push({ kind: 'env', file, ok: false, libtorchMissing: true, reason: `PEFT_NODE_ADDON is a prebuilt for ${need}: ${libtorch ? `found ${libtorch.fullVersion} (${libtorch.variant}) at ${libtorch.root}` : `not found: ${tried.join('; ')}`}` });
        return done(null);
      }
      Object.assign(c, { preload: libtorch, expectVersion: info.libtorch.version, variant: info.variant, buildInfo: info });
    }
    attempts.push({ kind: 'env', file, ok: true, reason: 'PEFT_NODE_ADDON' });
    return done(c);
  }

  const record = readJson<InstallRecord>(path.join(root, 'build', 'peft-node-install.json'));
  const order: CandidateKind[] = record?.addon === 'prebuilt' ? ['prebuilt', 'local'] : ['local', 'prebuilt'];
  for (const kind of order) {
    const { candidate, attempt } = kind === 'local' ? localCandidate(variant, variantReason, opts) : prebuiltCandidate(variant, opts);
    if (!candidate) {
      attempts.push(attempt);
      continue;
    }
    const t = testLoad(candidate, opts);
    if (t.ok) {
      attempts.push({ ...attempt, ok: true, cached: t.cached });
      return done(candidate, t.info);
    }
    attempts.push({ ...attempt, ok: false, reason: `${attempt.reason ? `${attempt.reason}; ` : ''}${t.reason}` });
  }
  return done(null);
}

/** The error for a failed resolution: every candidate and why, then how to fix it. */
export function loadError(res: Resolution, opts: LoaderOptions = {}, cause?: unknown): PeftNodeError {
  const root = opts.root ?? PACKAGE_ROOT;
  const lines = res.attempts.map((a, i) => `  ${i + 1}. ${a.kind === 'env' ? 'PEFT_NODE_ADDON' : a.kind === 'local' ? 'local build' : 'prebuilt'} ${a.file}: ${a.reason}`);
  const prebuiltMissingLibtorch = res.attempts.some((a) => a.libtorchMissing);
  const localPresent = res.attempts.some((a) => a.kind === 'local' && !/^not built/.test(a.reason ?? ''));
  const info = readJson<BuildInfo>(path.join(prebuiltDir(root, res.variant), 'build-info.json'));
  const need = info ? `libtorch ${info.libtorch.version} (${info.libtorch.variant})` : `libtorch (${res.variant})`;
  const otherVersion = info && info.libtorch.version !== libtorchScript(root).PINNED_VERSION;
  const variantArg = info ? ` --variant ${info.libtorch.variant}` : '';
  // The CLI spells it --torch-version (yargs keeps --version for the package's own).
  const cliArgs = `${variantArg}${otherVersion ? ` --torch-version ${info.libtorch.version}` : ''}`;
  const scriptArgs = `${variantArg}${otherVersion ? ` --version ${info.libtorch.version}` : ''}`;
  const fixes = [
    ...(prebuiltMissingLibtorch
      ? [
          `  - fetch ${need} for the prebuilt binary: \`npx peft-node libtorch install${cliArgs}\` ` +
            `(or \`node ${path.join(root, 'scripts', 'libtorch.js')} install${scriptArgs}\`), or set PEFT_NODE_LIBTORCH to a ${need} dir;`,
        ]
      : []),
    `  - build the addon from source: \`npm rebuild peft-node\` in your project, or \`npm run build:native\` in ${root} ` +
      '(needs a C++20 compiler and cmake >= 3.18; libtorch is located or fetched);',
    `  - \`node ${path.join(root, 'scripts', 'libtorch.js')} locate\` shows where libtorch is looked for; PEFT_NODE_VARIANT picks the variant ` +
      `(now ${res.variant}, from ${res.variantReason}); PEFT_NODE_ADDON loads a binary you name.`,
  ];
  const code = prebuiltMissingLibtorch && !localPresent ? 'ERR_LIBTORCH_NOT_FOUND' : 'ERR_ADDON_LOAD';
  const head =
    code === 'ERR_LIBTORCH_NOT_FOUND'
      ? `peft-node cannot run: ${need} was not found, and there is no local build of the native addon. Tried:`
      : `peft-node's native addon could not be loaded (variant ${res.variant}). Tried:`;
  return new PeftNodeError(code, [head, ...(lines.length ? lines : ['  (no candidate)']), 'To fix, do one of:', ...fixes].join('\n'), { cause });
}

// ---------------------------------------------------------------------------------------------------------------
// Loading

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

// ---------------------------------------------------------------------------------------------------------------
// Report (for `peft-node doctor`)

export interface PrebuiltSummary {
  variant: string;
  file: string | null;
  libtorch: string | null;
  /** Built from the native sources next to it (a stale one is never loaded). */
  current: boolean;
  glibcRequired: string | null;
  glibcxxRequired: string | null;
  date: string | null;
}

export interface AddonReport {
  platform: string;
  variant: string;
  variantReason: string;
  /** The binary this process has loaded, if any. */
  loaded: { kind: CandidateKind; file: string; libtorch: string | null } | null;
  /** What a load would pick now (each candidate test-loaded in a child; cached verdicts are reused). */
  chosen: { kind: CandidateKind; file: string; libtorch: string | null; torchVersion: string | null } | null;
  attempts: Attempt[];
  prebuilts: PrebuiltSummary[];
  installRecord: InstallRecord | null;
  verdictDir: string;
}

/** Everything `peft-node doctor` needs to say which binary runs, against which libtorch, and why. Never throws. */
export function addonReport(opts: LoaderOptions = {}): AddonReport {
  const root = opts.root ?? PACKAGE_ROOT;
  const env = opts.env ?? process.env;
  const here = nativeSourceHash(root);
  const prebuilts = prebuiltVariants(root).map((variant): PrebuiltSummary => {
    const dir = prebuiltDir(root, variant);
    const info = readJson<BuildInfo>(path.join(dir, 'build-info.json'));
    return {
      variant,
      file: pickBinary(dir),
      libtorch: info ? `${info.libtorch.fullVersion ?? info.libtorch.version} (${info.libtorch.variant})` : null,
      current: Boolean(info && (!info.sourceHash || !here || info.sourceHash === here)),
      glibcRequired: info?.glibc?.required ?? null,
      glibcxxRequired: info?.glibc?.glibcxxRequired ?? null,
      date: info?.date ?? null,
    };
  });
  let res: Resolution;
  try {
    res = resolveAddon(opts);
  } catch (err) {
    res = { ...wantedVariantSafe(opts), chosen: null, attempts: [{ kind: 'prebuilt', file: '', ok: false, reason: (err as Error).message }] };
  }
  const c = res.chosen;
  return {
    platform: platformTag(),
    variant: res.variant,
    variantReason: res.variantReason,
    loaded: lastLoad ? { kind: lastLoad.kind, file: lastLoad.file, libtorch: lastLoad.libtorch?.root ?? null } : null,
    chosen: c
      ? { kind: c.kind, file: c.file, libtorch: c.preload?.root ?? null, torchVersion: typeof res.info?.torchVersion === 'string' ? res.info.torchVersion : null }
      : null,
    attempts: res.attempts,
    prebuilts,
    installRecord: readJson<InstallRecord>(path.join(root, 'build', 'peft-node-install.json')),
    verdictDir: opts.verdictDir ?? defaultVerdictDir(env),
  };
}

function wantedVariantSafe(opts: LoaderOptions): { variant: string; variantReason: string } {
  try {
    const w = wantedVariant(opts);
    return { variant: w.variant, variantReason: w.reason };
  } catch {
    return { variant: 'cpu', variantReason: 'default' };
  }
}

if (require.main === module && process.argv[2] === CHECK_FLAG) childMain(process.argv[3] ?? '{}');
