/**
 * Candidate policy: which binaries to try, in which order, for which variant. Nothing is loaded into this process
 * here; each candidate is test-loaded in a child (scripts/libtorch/test-load.js) until one passes.
 *
 * Candidates, in this order (the install record, build/peft-node-install.json, puts the prebuilt first when the
 * install chose it):
 *   1. PEFT_NODE_ADDON=<file>: that binary (a prebuilt when a build-info.json lies next to it).
 *   2. The local build, build/Release/peft_node.node (cmake-js or node-gyp), which finds its libtorch by RUNPATH; used
 *      when its stamp (build/peft-node-build.json) fits PEFT_NODE_VARIANT and PEFT_NODE_LIBTORCH.
 *   3. The prebuilt of the wanted variant: prebuilds/<platform>-<arch>-<variant>/<name>.napi.glibc.node (the variant
 *      is a directory, the file is picked by node-gyp-build's tag rules), when its build-info.json was built from the
 *      native sources shipped next to it and the libtorch located for it (the run-time search order of
 *      scripts/libtorch/locate.js) has its X.Y.Z version and variant; that libtorch is preloaded before it.
 * The wanted variant: PEFT_NODE_VARIANT, else that of an explicit PEFT_NODE_LIBTORCH, else the install record's,
 * else "cpu".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Attempt, BuildInfo, Candidate, CandidateKind, InstallRecord, LocatedLibtorch } from './libtorch';
import { PACKAGE_ROOT, explicitLibtorch, locateLibtorchFor, prebuiltCandidate, readJson, realpath, testLoad, variantMatches } from './libtorch';

export interface Resolution {
  variant: string;
  variantReason: string;
  chosen: Candidate | null;
  attempts: Attempt[];
  /** Runtime facts the chosen binary reported in its test load (libtorch version, CUDA). */
  info?: Record<string, unknown>;
}

export interface LoaderOptions {
  /** Package root holding build/, prebuilds/, native/ (default: this package). */
  root?: string;
  env?: NodeJS.ProcessEnv;
  /** Where verdicts are cached (default <PEFT_NODE_CACHE or ~/.cache/peft-node>/addon-checks; null: no cache). */
  verdictDir?: string | null;
  /** Child test-load timeout (ms). */
  timeoutMs?: number;
}

export function installRecord(root: string): InstallRecord | null {
  return readJson<InstallRecord>(path.join(root, 'build', 'peft-node-install.json'));
}

function explicitOrNull(env: NodeJS.ProcessEnv): LocatedLibtorch | null {
  try {
    return explicitLibtorch(env);
  } catch {
    return null; // reported when a candidate needs it; a local build with its own RUNPATH does not
  }
}

/** The variant to load: PEFT_NODE_VARIANT, an explicit libtorch's, the install record's, else cpu. */
export function wantedVariant(opts: LoaderOptions = {}): { variant: string; reason: string } {
  const root = opts.root ?? PACKAGE_ROOT;
  const env = opts.env ?? process.env;
  if (env.PEFT_NODE_VARIANT) return { variant: env.PEFT_NODE_VARIANT, reason: 'PEFT_NODE_VARIANT' };
  const explicit = explicitOrNull(env);
  if (explicit) return { variant: explicit.variant, reason: `the libtorch in ${env.PEFT_NODE_LIBTORCH ? 'PEFT_NODE_LIBTORCH' : 'LIBTORCH'}` };
  const record = installRecord(root);
  if (record?.variant) return { variant: record.variant, reason: 'the install record' };
  return { variant: 'cpu', reason: 'default' };
}

/** PEFT_NODE_ADDON: the binary named, with its libtorch located when it is a prebuilt (build-info.json beside it). */
function envCandidate(file: string, opts: LoaderOptions): { candidate: Candidate | null; attempt: Attempt } {
  const info = readJson<BuildInfo>(path.join(path.dirname(file), 'build-info.json'));
  if (!fs.existsSync(file)) {
    return { candidate: null, attempt: { kind: 'env', file, ok: false, reason: 'PEFT_NODE_ADDON names a file that does not exist' } };
  }
  const c: Candidate = { kind: 'env', file, preload: null, expectVersion: null, variant: null };
  if (info?.libtorch?.version) {
    // A prebuilt (no RUNPATH): it needs its libtorch loaded first, as any prebuilt.
    const want = info.libtorch.variant || info.variant;
    const { libtorch, tried } = locateLibtorchFor(info.libtorch.version, want, opts);
    if (!libtorch || libtorch.version !== info.libtorch.version || !variantMatches(want, libtorch.variant)) {
      const need = `libtorch ${info.libtorch.version} (${want})`;
      const found = libtorch ? `found ${libtorch.fullVersion} (${libtorch.variant}) at ${libtorch.root}` : `not found: ${tried.join('; ')}`;
      return { candidate: null, attempt: { kind: 'env', file, ok: false, libtorchMissing: true, reason: `PEFT_NODE_ADDON is a prebuilt for ${need}: ${found}` } };
    }
    Object.assign(c, { preload: libtorch, expectVersion: info.libtorch.version, variant: info.variant, buildInfo: info });
  }
  return { candidate: c, attempt: { kind: 'env', file, ok: true, reason: 'PEFT_NODE_ADDON' } };
}

function localCandidate(variant: string, variantReason: string, opts: LoaderOptions): { candidate: Candidate | null; attempt: Attempt } {
  const root = opts.root ?? PACKAGE_ROOT;
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
  const explicit = explicitOrNull(opts.env ?? process.env);
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
    // The binary named is used as it is (not test-loaded: the user chose it).
    const { candidate, attempt } = envCandidate(path.resolve(env.PEFT_NODE_ADDON), opts);
    attempts.push(attempt);
    return done(candidate);
  }

  const order: CandidateKind[] = installRecord(root)?.addon === 'prebuilt' ? ['prebuilt', 'local'] : ['local', 'prebuilt'];
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
