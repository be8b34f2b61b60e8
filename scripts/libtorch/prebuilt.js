'use strict';
// Prebuilt binaries: prebuilds/<platform>-<arch>-<variant>/<name>.napi.glibc.node with build-info.json beside it
// (scripts/prebuild.js writes both), what native sources a binary was built from, and whether a prebuilt fits the
// libtorch located for it. Used by the run-time loader (lib/runtime), scripts/install.js and scripts/prebuild.js.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { PACKAGE_ROOT, readJson, variantMatches } = require('./facts.js');
const { locateLibtorchSync } = require('./locate.js');

function platformTag() {
  return `${process.platform}-${process.arch}`;
}

/** prebuilds/<platform>-<arch>-<variant> */
function prebuiltDir(root, variant) {
  return path.join(root, 'prebuilds', `${platformTag()}-${variant}`);
}

/** Variants with a prebuilt directory for this platform. */
function prebuiltVariants(root = PACKAGE_ROOT) {
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

/** The subset of node-gyp-build's rules that our file names use (<name>.napi.<glibc|musl>.node). */
const minimalTags = {
  parseTags(file) {
    const parts = file.split('.');
    if (parts.pop() !== 'node') return undefined;
    const libc = parts.find((p) => p === 'glibc' || p === 'musl');
    return { file, libc, specificity: parts.filter((p) => p === 'napi' || p === libc).length };
  },
  matchTags: () => (t) => {
    if (!t) return false;
    const mine = process.env.LIBC || (fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc');
    return !t.libc || t.libc === mine;
  },
  compareTags: () => (a, b) => b.specificity - a.specificity,
};

/** The binary node-gyp-build 4.8's rules pick in a variant dir (<name>.<tags>.node; napi, glibc/musl, ...). */
function pickBinary(dir) {
  let files;
  try {
    files = fs.readdirSync(dir);
  } catch {
    return null;
  }
  let ngb;
  try {
    ngb = require('node-gyp-build');
  } catch {
    ngb = minimalTags; // a package copied without its dependencies
  }
  const winner = files
    .map((f) => ngb.parseTags(f))
    .filter((t) => ngb.matchTags('node', process.versions.modules)(t))
    .sort(ngb.compareTags('node'))[0];
  return winner ? path.join(dir, winner.file) : null;
}

/**
 * sha256 over native/core and native/binding (relative path + content, sorted): what a binary was compiled from. A
 * prebuilt whose build-info has another hash was built from other sources than the TypeScript next to it expects.
 * null when the package has no native/ sources.
 */
function nativeSourceHash(root = PACKAGE_ROOT) {
  const files = [];
  const visit = (dir) => {
    let entries;
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

/** The run-time search order (locate.js) for the libtorch a binary was built against. */
function locateLibtorchFor(version, variant, opts = {}) {
  const root = opts.root || PACKAGE_ROOT;
  return locateLibtorchSync({ env: opts.env || process.env, version, variant, installRecord: path.join(root, 'build', 'peft-node-install.json') });
}

/**
 * The prebuilt for a variant and why it does (not) fit: { candidate, attempt }. It fits when its build-info.json
 * names this variant, it was built from the native sources next to it, and the libtorch (opts.libtorch, else located
 * for it by the run-time order) has its X.Y.Z version and variant.
 */
function prebuiltCandidate(variant, opts = {}) {
  const root = opts.root || PACKAGE_ROOT;
  const dir = prebuiltDir(root, variant);
  const file = pickBinary(dir);
  const fail = (reason, extra = {}) => ({ candidate: null, attempt: { kind: 'prebuilt', file: file || dir, ok: false, reason, ...extra } });
  if (!file) {
    const others = prebuiltVariants(root).filter((v) => v !== variant);
    return fail(`no prebuilt for ${platformTag()}-${variant}${others.length ? ` (there are: ${others.join(', ')})` : ''}`);
  }
  const info = readJson(path.join(dir, 'build-info.json'));
  if (!info || !info.libtorch || !info.libtorch.version) return fail(`${path.join(dir, 'build-info.json')} is missing or unreadable`);
  if (info.variant && info.variant !== variant) return fail(`build-info.json says variant ${info.variant}, the directory ${variant}`);
  if (info.sourceHash) {
    const here = nativeSourceHash(root);
    if (here && here !== info.sourceHash) {
      return fail('built from other native sources than these (a stale prebuilt: run `npm run build:prebuilt`)');
    }
  }
  const want = info.libtorch.variant || variant;
  let lt = opts.libtorch;
  let tried = [];
  if (lt === undefined) {
    try {
      ({ libtorch: lt, tried } = locateLibtorchFor(info.libtorch.version, want, opts));
    } catch (err) {
      return fail(err.message, { libtorchMissing: true });
    }
  }
  const need = `libtorch ${info.libtorch.version} (${want})`;
  if (!lt) return fail(`needs ${need}, not found: ${tried.join('; ')}`, { libtorchMissing: true });
  if (lt.version !== info.libtorch.version || !variantMatches(want, lt.variant)) {
    return fail(`needs ${need}, but the libtorch found (${lt.source}: ${lt.root}) is ${lt.fullVersion || lt.version} (${lt.variant})`, {
      libtorchMissing: true,
    });
  }
  return {
    candidate: { kind: 'prebuilt', file, preload: lt, expectVersion: info.libtorch.version, variant, buildInfo: info },
    attempt: { kind: 'prebuilt', file, ok: true, reason: `${need} from ${lt.source}: ${lt.root}` },
  };
}

module.exports = { platformTag, prebuiltDir, prebuiltVariants, pickBinary, nativeSourceHash, locateLibtorchFor, prebuiltCandidate };
