/**
 * What `peft-node doctor` says about the binary: the prebuilts shipped (current or stale), the install record, which
 * binary a load would pick now and why each other one was not used, and which one this process has loaded.
 */
import * as path from 'node:path';
import { LoaderOptions, Resolution, installRecord, resolveAddon, wantedVariant } from './candidates';
import {
  Attempt,
  BuildInfo,
  CandidateKind,
  InstallRecord,
  PACKAGE_ROOT,
  defaultVerdictDir,
  nativeSourceHash,
  pickBinary,
  platformTag,
  prebuiltDir,
  prebuiltVariants,
  readJson,
} from './libtorch';
import { loadedAddon } from './load';

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
  const last = loadedAddon();
  return {
    platform: platformTag(),
    variant: res.variant,
    variantReason: res.variantReason,
    loaded: last ? { kind: last.kind, file: last.file, libtorch: last.libtorch?.root ?? null } : null,
    chosen: c
      ? { kind: c.kind, file: c.file, libtorch: c.preload?.root ?? null, torchVersion: typeof res.info?.torchVersion === 'string' ? res.info.torchVersion : null }
      : null,
    attempts: res.attempts,
    prebuilts,
    installRecord: installRecord(root),
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
