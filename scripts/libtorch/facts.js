'use strict';
// The facts every other file here (and lib/runtime) takes from one place: the pinned libtorch, the versions the
// native code compiles against, variant names and how they match, where the cache is, the error codes.

const path = require('path');
const os = require('os');
const fs = require('fs');

/** The package root: this file is scripts/libtorch/facts.js. */
const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');
const PINNED_VERSION = '2.13.0';
const PINNED_VARIANT = 'cpu';
// The native code compiles against these libtorch releases; only an explicit dir may differ from the pin.
const SUPPORTED_MIN = [2, 11, 0];
const SUPPORTED_MAX_EXCLUSIVE = [2, 15, 0];
/** Written last into a cache entry: its presence is what makes the entry complete. */
const MARKER = '.peft-node-complete';
const ERR_NOT_FOUND = 'ERR_LIBTORCH_NOT_FOUND';
const ERR_INVALID = 'ERR_LIBTORCH_INVALID';

function errorWithCode(message, code, extra) {
  const err = new Error(message);
  err.code = code;
  if (extra) Object.assign(err, extra);
  return err;
}

function defaultLog(msg) {
  process.stderr.write(`peft-node: ${msg}\n`);
}

function readJson(file, fsImpl = fs) {
  try {
    return JSON.parse(fsImpl.readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Versions

function parseVersion(v) {
  // "2.13.0+cpu" / "2.13.0a0+git1234" -> { base: "2.13.0", nums: [2,13,0], local: "cpu" }
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?([^+]*)(?:\+(.*))?$/.exec(String(v || '').trim());
  if (!m) return null;
  const nums = [Number(m[1]), Number(m[2]), Number(m[3] || 0)];
  return { base: nums.join('.'), nums, pre: m[4] || '', local: m[5] || '' };
}

function cmpNums(a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

function inSupportedRange(nums) {
  return cmpNums(nums, SUPPORTED_MIN) >= 0 && cmpNums(nums, SUPPORTED_MAX_EXCLUSIVE) < 0;
}

/** "2.11-2.14" */
function supportedRange() {
  return `${SUPPORTED_MIN.slice(0, 2).join('.')}-${SUPPORTED_MAX_EXCLUSIVE[0]}.${SUPPORTED_MAX_EXCLUSIVE[1] - 1}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Variants: cpu, cu126, cu130, ... ("cuda" when a CUDA build's version is unknown)

function cudaVariant(cudaVersion) {
  // "12.6" -> "cu126"
  const m = /^(\d+)\.(\d+)/.exec(String(cudaVersion || ''));
  return m ? `cu${m[1]}${m[2]}` : 'cuda';
}

// Local version tag -> variant: "cpu", "cpu.cxx11.abi" (older wheels) -> "cpu"; "cu126" -> "cu126"; "rocm6.4" kept.
function variantFromLocal(local) {
  if (!local) return null;
  const m = /^(cpu|cu\d+|xpu)(?:\.|$)/.exec(local);
  return m ? m[1] : local;
}

function isCuda(v) {
  return v === 'cuda' || /^cu\d+$/.test(String(v));
}

/** Equal variants, or CUDA on both sides where one CUDA version is unknown ("cuda"). */
function variantMatches(wanted, found) {
  if (!found) return false;
  if (wanted === found) return true;
  return isCuda(wanted) && isCuda(found) && (wanted === 'cuda' || found === 'cuda');
}

/** The variant asked for: PEFT_NODE_VARIANT (or the older PEFT_NODE_LIBTORCH_VARIANT), else cpu. */
function envVariant(env = process.env) {
  return env.PEFT_NODE_VARIANT || env.PEFT_NODE_LIBTORCH_VARIANT || PINNED_VARIANT;
}

// ---------------------------------------------------------------------------------------------------------------
// The cache: ${PEFT_NODE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/peft-node}; libtorch in <base>/libtorch/<version>-<variant>,
// test-load verdicts in <base>/addon-checks, the CLI's state in <base> itself.

function cacheBase(env = process.env) {
  if (env.PEFT_NODE_CACHE) return path.resolve(env.PEFT_NODE_CACHE);
  const home = env.HOME || os.homedir();
  return path.join(env.XDG_CACHE_HOME || path.join(home, '.cache'), 'peft-node');
}

function defaultCacheRoot(env = process.env) {
  return path.join(cacheBase(env), 'libtorch');
}

function defaultVerdictDir(env = process.env) {
  return path.join(cacheBase(env), 'addon-checks');
}

module.exports = {
  PACKAGE_ROOT,
  PINNED_VERSION,
  PINNED_VARIANT,
  SUPPORTED_MIN,
  SUPPORTED_MAX_EXCLUSIVE,
  MARKER,
  ERR_NOT_FOUND,
  ERR_INVALID,
  errorWithCode,
  defaultLog,
  readJson,
  parseVersion,
  inSupportedRange,
  supportedRange,
  cudaVariant,
  variantFromLocal,
  variantMatches,
  envVariant,
  cacheBase,
  defaultCacheRoot,
  defaultVerdictDir,
};
