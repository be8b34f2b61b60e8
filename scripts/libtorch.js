#!/usr/bin/env node
'use strict';
// Locates (or fetches) the libtorch that peft-node builds and runs against. Node builtins only, because it runs
// from `npm install` before any dependency can be trusted, and from binding.gyp command expansions.
//
// Order (docs/design.md §4):
//   a. PEFT_NODE_LIBTORCH or LIBTORCH: an explicit libtorch dir (or a pip site-packages `torch` dir);
//   b. a Python `torch` of the pinned version/variant;
//   c. the cache <cacheRoot>/<version>-<variant> (only when it holds the completion marker);
//   d. a fetch into that cache: the torch wheel through pip, or the official libtorch zip.
//   e. otherwise an Error with code ERR_LIBTORCH_NOT_FOUND that lists every way tried.
//
// CLI:
//   node scripts/libtorch.js locate [--no-fetch] [--json] [--print root|lib|include|torch-dir|version|variant|cuda|defines]
//   node scripts/libtorch.js install [--variant cpu|cu126|...] [--version X.Y.Z]
// Log lines go to stderr prefixed "peft-node:", so stdout stays machine-readable.
//
// Environment:
//   PEFT_NODE_LIBTORCH, LIBTORCH          explicit libtorch dir (version 2.11-2.14 accepted, the pin 2.13.0 preferred)
//   PEFT_NODE_ALLOW_VERSION_MISMATCH=1   accept an explicit dir outside 2.11-2.14 or of unknown version
//   PEFT_NODE_VARIANT (or the older PEFT_NODE_LIBTORCH_VARIANT)  variant to locate/fetch: cpu (default), cu126, cu130, ...
//   PEFT_NODE_CACHE                      cache base (default ${XDG_CACHE_HOME:-~/.cache}/peft-node); libtorch lives in <base>/libtorch
//   PEFT_NODE_PYTHON                     python executable to probe and to run pip with (default: python3, then python)
//   PEFT_NODE_NO_FETCH=1                 never fetch (same as --no-fetch)
//   PEFT_NODE_LIBTORCH_URL               libtorch zip URL (http(s)://, file:// or a local path) for mirrors
//   PEFT_NODE_TORCH_INDEX_URL            pip index for the torch wheel (default https://download.pytorch.org/whl/<variant>)

const path = require('path');
const os = require('os');
const realFs = require('fs');
const crypto = require('crypto');
const childProcess = require('child_process');

const PINNED_VERSION = '2.13.0';
const PINNED_VARIANT = 'cpu';
// The native code compiles against these libtorch releases; only an explicit dir may differ from the pin.
const SUPPORTED_MIN = [2, 11, 0];
const SUPPORTED_MAX_EXCLUSIVE = [2, 15, 0];
const MARKER = '.peft-node-complete';
const ERR_NOT_FOUND = 'ERR_LIBTORCH_NOT_FOUND';
const ERR_INVALID = 'ERR_LIBTORCH_INVALID';

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function defaultLog(msg) {
  process.stderr.write(`peft-node: ${msg}\n`);
}

function defaultCacheRoot(env) {
  if (env.PEFT_NODE_CACHE) return path.join(path.resolve(env.PEFT_NODE_CACHE), 'libtorch');
  const home = env.HOME || os.homedir();
  const base = env.XDG_CACHE_HOME || path.join(home, '.cache');
  return path.join(base, 'peft-node', 'libtorch');
}

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

// "cu126" and a libtorch whose CUDA version we could not read ("cuda") are compatible; so are equal variants.
function variantMatches(wanted, found) {
  if (wanted === found) return true;
  const isCuda = (v) => v === 'cuda' || /^cu\d+$/.test(v);
  return isCuda(wanted) && isCuda(found) && (wanted === 'cuda' || found === 'cuda');
}

function errorWithCode(message, code, extra) {
  const err = new Error(message);
  err.code = code;
  if (extra) Object.assign(err, extra);
  return err;
}

// Default exec runner: async (so the lock heartbeat keeps ticking during a long pip download), bounded by a timeout.
// Resolves { code, stdout, stderr, error } and never rejects: callers turn failures into "why this way failed".
function defaultExec(cmd, args, options = {}) {
  return new Promise((resolve) => {
    let child;
    try {
      child = childProcess.spawn(cmd, args, {
        cwd: options.cwd,
        env: options.env || process.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (error) {
      resolve({ code: null, stdout: '', stderr: '', error });
      return;
    }
    let stdout = '';
    let stderr = '';
    const cap = (s, d) => (s + d).slice(-(1 << 20)); // bounded, keeping the tail (where errors are)
    child.stdout.on('data', (d) => (stdout = cap(stdout, d.toString())));
    child.stderr.on('data', (d) => (stderr = cap(stderr, d.toString())));
    let timedOut = false;
    const timer = options.timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, options.timeoutMs)
      : null;
    let spawnError = null;
    child.on('error', (e) => (spawnError = e));
    child.on('close', (code) => {
      if (timer) clearTimeout(timer);
      const error = spawnError || (timedOut ? errorWithCode(`timed out after ${options.timeoutMs} ms`, 'ETIMEDOUT') : null);
      resolve({ code: spawnError || timedOut ? null : code, stdout, stderr, error });
    });
  });
}

function execFailure(cmdline, r) {
  if (r.error && r.error.code === 'ENOENT') return `${cmdline}: not found`;
  if (r.error) return `${cmdline}: ${r.error.message}`;
  const lines = (r.stderr || r.stdout || '').trim().split('\n').filter(Boolean);
  const errors = lines.filter((l) => /error/i.test(l)); // pip: skip its retry warnings, keep the verdict
  const tail = (errors.length ? errors : lines).slice(-3).join(' | ');
  return `${cmdline}: exit ${r.code}${tail ? ` (${tail})` : ''}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading a libtorch directory

function readText(fs, file) {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

function libFile(name) {
  if (process.platform === 'darwin') return `lib${name}.dylib`;
  if (process.platform === 'win32') return `${name}.lib`;
  return `lib${name}.so`;
}

/**
 * Resolves a user-given path to a libtorch root: accepts the root itself (lib/, include/, share/), a site-packages dir
 * holding torch/, a dir holding libtorch/, or the share/cmake/Torch dir. Returns null when none fits.
 */
function resolveRoot(fs, dir) {
  const abs = path.resolve(dir);
  const candidates = [abs, path.join(abs, 'torch'), path.join(abs, 'libtorch')];
  if (/[\\/]share[\\/]cmake[\\/]Torch[\\/]?$/.test(abs)) candidates.unshift(path.resolve(abs, '..', '..', '..'));
  return candidates.find((c) => fs.existsSync(path.join(c, 'share', 'cmake', 'Torch', 'TorchConfig.cmake'))) || null;
}

/**
 * Inspects a libtorch root without loading it: { ok, problem?, version, fullVersion, variant, cuda }.
 * The version comes from (first found) torch/version.py (pip layout), build-version (official zip), our cache
 * marker, then the C++ headers; the variant from the version's local tag, else from libtorch_cuda's presence.
 */
function inspectLibtorch(root, fsOverride) {
  const fs = fsOverride ? { ...realFs, ...fsOverride } : realFs;
  const info = { root, ok: true, problem: null, version: null, fullVersion: null, variant: null, cuda: false };
  const missing = [];
  if (!fs.existsSync(path.join(root, 'share', 'cmake', 'Torch', 'TorchConfig.cmake'))) missing.push('share/cmake/Torch/TorchConfig.cmake');
  if (!fs.existsSync(path.join(root, 'lib', libFile('torch')))) missing.push(`lib/${libFile('torch')}`);
  if (missing.length) {
    info.ok = false;
    info.problem = `${root} is not a libtorch dir (missing ${missing.join(', ')})`;
  }
  info.cuda = fs.existsSync(path.join(root, 'lib', libFile('torch_cuda')));

  let full = null;
  let cudaVer = null;
  const versionPy = readText(fs, path.join(root, 'version.py'));
  if (versionPy) {
    const m = /__version__\s*=\s*['"]([^'"]+)['"]/.exec(versionPy);
    if (m) full = m[1];
    const c = /^cuda\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]/m.exec(versionPy);
    if (c) cudaVer = c[1];
  }
  if (!full) {
    const bv = readText(fs, path.join(root, 'build-version'));
    if (bv && parseVersion(bv.trim())) full = bv.trim();
  }
  if (!full) {
    const marker = readMarker(fs, root);
    if (marker && marker.version) full = marker.variant ? `${marker.version}+${marker.variant}` : marker.version;
  }
  if (!full) {
    for (const rel of ['include/torch/headeronly/version.h', 'include/torch/csrc/api/include/torch/version.h']) {
      const h = readText(fs, path.join(root, rel));
      if (!h) continue;
      const get = (n) => (new RegExp(`#define\\s+TORCH_VERSION_${n}\\s+(\\d+)`).exec(h) || [])[1];
      if (get('MAJOR') !== undefined && get('MINOR') !== undefined) {
        full = `${get('MAJOR')}.${get('MINOR')}.${get('PATCH') || 0}`;
        break;
      }
    }
  }
  const parsed = parseVersion(full);
  if (parsed) {
    info.fullVersion = full;
    info.version = parsed.base;
    info.variant = variantFromLocal(parsed.local);
  }
  if (!info.variant) info.variant = info.cuda ? cudaVariant(cudaVer) : 'cpu';
  return info;
}

function readMarker(fs, dir) {
  const text = readText(fs, path.join(dir, MARKER));
  if (text === null) return null;
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}

// Compile definitions libtorch's CMake targets add to every consumer (USE_DISTRIBUTED, ...): binding.gyp needs the
// same ones as the CMake build, and they differ between libtorch builds, so read them instead of hard-coding.
function torchCompileDefinitions(fs, root) {
  const text = readText(fs, path.join(root, 'share', 'cmake', 'Caffe2', 'Caffe2Targets.cmake')) || '';
  const defs = new Set();
  for (const target of ['c10', 'torch_cpu', 'torch_cuda', 'c10_cuda']) {
    const block = new RegExp(`set_target_properties\\(${target} PROPERTIES([\\s\\S]*?)\\)`).exec(text);
    const m = block && /INTERFACE_COMPILE_DEFINITIONS "([^"]*)"/.exec(block[1]);
    if (m) for (const d of m[1].split(';')) if (/^[A-Za-z_]\w*(=\w*)?$/.test(d)) defs.add(d);
  }
  return [...defs];
}

function makeResult(info, source, fs = realFs) {
  const root = info.root;
  return {
    root,
    version: info.version,
    fullVersion: info.fullVersion,
    variant: info.variant,
    cuda: info.cuda,
    source,
    torchDir: path.join(root, 'share', 'cmake', 'Torch'),
    libDir: path.join(root, 'lib'),
    includeDirs: [path.join(root, 'include'), path.join(root, 'include', 'torch', 'csrc', 'api', 'include')],
    compileDefinitions: torchCompileDefinitions(fs, root),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Context

function makeContext(opts = {}) {
  const env = opts.env || process.env;
  const fs = opts.fs ? { ...realFs, ...opts.fs } : realFs;
  const noFetchEnv = env.PEFT_NODE_NO_FETCH === '1' || env.PEFT_NODE_NO_FETCH === 'true';
  return {
    env,
    fs,
    exec: opts.exec || defaultExec,
    download: opts.download || downloadUrl,
    log: opts.log || defaultLog,
    version: opts.version || PINNED_VERSION,
    variant: opts.variant || env.PEFT_NODE_VARIANT || env.PEFT_NODE_LIBTORCH_VARIANT || PINNED_VARIANT,
    cacheRoot: path.resolve(opts.cacheRoot || defaultCacheRoot(env)),
    allowFetch: opts.allowFetch !== undefined ? Boolean(opts.allowFetch) && !noFetchEnv : !noFetchEnv,
    pythons: opts.pythons || (env.PEFT_NODE_PYTHON ? [env.PEFT_NODE_PYTHON] : ['python3', 'python']),
    pythonTimeoutMs: opts.pythonTimeoutMs || 30_000,
    pipTimeoutMs: opts.pipTimeoutMs || 30 * 60_000,
    extractTimeoutMs: opts.extractTimeoutMs || 30 * 60_000,
    lockTimeoutMs: opts.lockTimeoutMs || 30 * 60_000,
    lockPollMs: opts.lockPollMs || 500,
    // A live holder touches the lock every heartbeatMs; one silent for lockStaleMs is dead (other host, reused pid).
    lockHeartbeatMs: opts.lockHeartbeatMs || 10_000,
    lockStaleMs: opts.lockStaleMs || 5 * 60_000,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// a. Explicit directory from the environment

function fromEnv(ctx, varName) {
  const dir = ctx.env[varName];
  const root = resolveRoot(ctx.fs, dir);
  if (!root) {
    throw errorWithCode(
      `${varName}=${dir} is not a libtorch dir: no share/cmake/Torch/TorchConfig.cmake in it, in ${dir}/torch or in ` +
        `${dir}/libtorch. Point it at an unzipped libtorch (the dir holding lib/, include/, share/) or at ` +
        `<site-packages>/torch, or unset it to let peft-node find or fetch libtorch ${ctx.version}.`,
      ERR_INVALID,
    );
  }
  const info = inspectLibtorch(root, ctx.fs);
  if (!info.ok) throw errorWithCode(`${varName}: ${info.problem}`, ERR_INVALID);
  const allowMismatch = ctx.env.PEFT_NODE_ALLOW_VERSION_MISMATCH === '1';
  const parsed = parseVersion(info.version);
  if (!parsed) {
    if (!allowMismatch) {
      throw errorWithCode(
        `${varName}=${dir}: cannot read the libtorch version (no version.py, build-version or torch/version.h). ` +
          `Set PEFT_NODE_ALLOW_VERSION_MISMATCH=1 to use it anyway.`,
        ERR_INVALID,
      );
    }
    ctx.log(`warning: ${varName}: unknown libtorch version at ${root}, used because PEFT_NODE_ALLOW_VERSION_MISMATCH=1`);
  } else if (info.version !== ctx.version) {
    const range = `${SUPPORTED_MIN.slice(0, 2).join('.')}-2.${SUPPORTED_MAX_EXCLUSIVE[1] - 1}`;
    if (!inSupportedRange(parsed.nums) && !allowMismatch) {
      throw errorWithCode(
        `${varName}=${dir} holds libtorch ${info.fullVersion}, but peft-node needs ${ctx.version} (builds against ` +
          `${range}). Point ${varName} at libtorch ${ctx.version}, unset it, or set PEFT_NODE_ALLOW_VERSION_MISMATCH=1 ` +
          `to try anyway.`,
        ERR_INVALID,
      );
    }
    ctx.log(
      `warning: ${varName} holds libtorch ${info.fullVersion}, not the pinned ${ctx.version}; ` +
        `results are only tested against ${ctx.version}`,
    );
  }
  return makeResult(info, 'env', ctx.fs);
}

// ---------------------------------------------------------------------------------------------------------------
// b. Python torch. Reads torch/version.py through importlib instead of `import torch`: same answer
// (torch.utils.cmake_prefix_path is <torch>/share/cmake), ~20x faster, and it works where importing torch would
// fail (a CUDA build without a driver).

const PY_PROBE = [
  'import importlib.util, json, os, sys',
  "s = importlib.util.find_spec('torch')",
  'if s is None or not s.origin:',
  "    print(json.dumps({'found': False})); sys.exit(0)",
  'd = os.path.dirname(s.origin)',
  'ns = {}',
  'try:',
  "    exec(open(os.path.join(d, 'version.py')).read(), ns)",
  'except Exception as e:',
  "    ns = {'error': str(e)}",
  "print(json.dumps({'found': True, 'dir': d, 'cmake_prefix_path': os.path.join(d, 'share', 'cmake'),",
  "                  'version': ns.get('__version__'), 'cuda': ns.get('cuda'), 'error': ns.get('error')}))",
].join('\n');

async function fromPython(ctx) {
  const reasons = [];
  for (const py of ctx.pythons) {
    const r = await ctx.exec(py, ['-c', PY_PROBE], { timeoutMs: ctx.pythonTimeoutMs, env: ctx.env });
    if (r.code !== 0) {
      reasons.push(execFailure(py, r));
      continue;
    }
    let probe;
    try {
      probe = JSON.parse(r.stdout.trim().split('\n').pop());
    } catch {
      reasons.push(`${py}: unexpected output ${JSON.stringify(r.stdout.slice(0, 200))}`);
      continue;
    }
    if (!probe.found) {
      reasons.push(`${py}: no torch module`);
      continue;
    }
    const parsed = parseVersion(probe.version);
    if (!parsed) {
      reasons.push(`${py}: torch at ${probe.dir} has unreadable version ${JSON.stringify(probe.version)}`);
      continue;
    }
    const variant = variantFromLocal(parsed.local) || (probe.cuda ? cudaVariant(probe.cuda) : 'cpu');
    if (parsed.base !== ctx.version || parsed.pre) {
      reasons.push(`${py}: torch ${probe.version} at ${probe.dir} is not the pinned ${ctx.version}`);
      continue;
    }
    if (!variantMatches(ctx.variant, variant)) {
      reasons.push(`${py}: torch ${probe.version} at ${probe.dir} is variant ${variant}, not ${ctx.variant}`);
      continue;
    }
    const info = inspectLibtorch(probe.dir, ctx.fs);
    if (!info.ok) {
      reasons.push(`${py}: torch ${probe.version}: ${info.problem} (a torch wheel without C++ headers/cmake files?)`);
      continue;
    }
    info.variant = variant;
    return { result: makeResult(info, 'python', ctx.fs), reasons };
  }
  return { result: null, reasons };
}

// ---------------------------------------------------------------------------------------------------------------
// c. Cache

function cacheKey(ctx) {
  return `${ctx.version}-${ctx.variant}`;
}

function fromCache(ctx) {
  const dir = path.join(ctx.cacheRoot, cacheKey(ctx));
  if (!ctx.fs.existsSync(dir)) return { result: null, reason: `${dir}: not present`, incomplete: false };
  const marker = readMarker(ctx.fs, dir);
  if (!marker) return { result: null, reason: `${dir}: incomplete (no ${MARKER}), a fetch was interrupted`, incomplete: true };
  const info = inspectLibtorch(dir, ctx.fs);
  if (!info.ok) return { result: null, reason: `${dir}: ${info.problem}`, incomplete: true };
  if (marker.version !== ctx.version || !variantMatches(ctx.variant, marker.variant)) {
    return { result: null, reason: `${dir}: marker says ${marker.version}-${marker.variant}`, incomplete: true };
  }
  info.variant = marker.variant;
  return { result: makeResult(info, 'cache', ctx.fs), reason: null, incomplete: false };
}

// ---------------------------------------------------------------------------------------------------------------
// Lock: <cacheRoot>/<key>.lock, created with O_EXCL ('wx'), holding {pid, hostname, nonce, since}.
// A holder refreshes its mtime every lockHeartbeatMs. The lock is stale when its pid is dead (same host) or it was
// not refreshed for lockStaleMs (another host on a shared home, a reused pid, a hung process). The lock only avoids
// duplicate work: the final rename is atomic, so even a wrongly broken lock cannot produce a half-written cache.

function readLockFile(fs, file) {
  let st;
  let raw;
  try {
    st = fs.statSync(file);
    raw = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw e;
  }
  let info = null;
  try {
    info = JSON.parse(raw);
  } catch {
    /* being written right now, or garbage */
  }
  return { raw, info, mtimeMs: st.mtimeMs };
}

function pidAlive(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

function staleReason(ctx, holder) {
  const age = Date.now() - holder.mtimeMs;
  if (!holder.info) return age > 10_000 ? `unreadable lock, ${Math.round(age / 1000)} s old` : null;
  if (holder.info.hostname === os.hostname() && !pidAlive(holder.info.pid)) {
    return `its pid ${holder.info.pid} is not running`;
  }
  if (age > ctx.lockStaleMs) return `no heartbeat for ${Math.round(age / 1000)} s`;
  return null;
}

function breakLock(ctx, lockPath, holder) {
  // Rename first (atomic): of two processes breaking the same stale lock only one gets it. If what we moved away is
  // not the lock we judged stale (someone re-created it in between), put it back.
  const tomb = `${lockPath}.stale-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    ctx.fs.renameSync(lockPath, tomb);
  } catch (e) {
    if (e.code === 'ENOENT') return;
    throw e;
  }
  const moved = readLockFile(ctx.fs, tomb);
  if (moved && moved.raw !== holder.raw) {
    try {
      ctx.fs.linkSync(tomb, lockPath);
    } catch {
      /* a third process took the lock meanwhile; the atomic final rename still keeps the cache consistent */
    }
  }
  ctx.fs.rmSync(tomb, { force: true });
}

async function acquireLock(ctx, lockPath) {
  const fs = ctx.fs;
  const me = { pid: process.pid, hostname: os.hostname(), nonce: crypto.randomBytes(8).toString('hex'), since: new Date().toISOString() };
  const raw = JSON.stringify(me);
  const deadline = Date.now() + ctx.lockTimeoutMs;
  let announced = false;
  for (;;) {
    let fd = null;
    try {
      fd = fs.openSync(lockPath, 'wx');
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
    if (fd !== null) {
      try {
        fs.writeSync(fd, raw);
      } finally {
        fs.closeSync(fd);
      }
      const beat = setInterval(() => {
        try {
          const t = new Date();
          fs.utimesSync(lockPath, t, t);
        } catch {
          /* lock broken by someone else: the atomic rename keeps us safe */
        }
      }, ctx.lockHeartbeatMs);
      beat.unref();
      return {
        release() {
          clearInterval(beat);
          const now = readLockFile(fs, lockPath);
          if (now && now.raw === raw) fs.rmSync(lockPath, { force: true });
        },
      };
    }
    const holder = readLockFile(fs, lockPath);
    if (!holder) continue; // released between our open and read
    const stale = staleReason(ctx, holder);
    if (stale) {
      ctx.log(`breaking stale lock ${lockPath} (${stale})`);
      breakLock(ctx, lockPath, holder);
      continue;
    }
    if (Date.now() > deadline) {
      const who = holder.info ? `pid ${holder.info.pid} on ${holder.info.hostname}` : 'an unknown process';
      throw new Error(
        `timed out after ${Math.round(ctx.lockTimeoutMs / 1000)} s waiting for ${lockPath} held by ${who}; ` +
          `delete it if no other peft-node install is running`,
      );
    }
    if (!announced) {
      const who = holder.info ? `pid ${holder.info.pid} on ${holder.info.hostname}` : 'another process';
      ctx.log(`waiting for ${who}, which is fetching libtorch into the cache (lock ${lockPath})`);
      announced = true;
    }
    await sleep(ctx.lockPollMs);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// d. Fetch

async function fetchIntoCache(ctx) {
  const fs = ctx.fs;
  const key = cacheKey(ctx);
  const finalDir = path.join(ctx.cacheRoot, key);
  const reasons = [];
  try {
    fs.mkdirSync(ctx.cacheRoot, { recursive: true });
  } catch (e) {
    return { result: null, reasons: [`fetch: cannot create ${ctx.cacheRoot}: ${e.message}`] };
  }
  let lock;
  try {
    lock = await acquireLock(ctx, path.join(ctx.cacheRoot, `${key}.lock`));
  } catch (e) {
    return { result: null, reasons: [`fetch: ${e.message}`] };
  }
  try {
    // Another process may have completed the cache while we waited for the lock.
    const again = fromCache(ctx);
    if (again.result) {
      ctx.log(`libtorch ${key} was fetched by another process meanwhile`);
      return { result: again.result, reasons };
    }
    if (fs.existsSync(finalDir)) {
      ctx.log(`removing incomplete cache ${finalDir} (${again.reason})`);
      fs.rmSync(finalDir, { recursive: true, force: true });
    }
    // Only lock holders create temp dirs for this key, so any left over belong to dead processes.
    for (const name of fs.readdirSync(ctx.cacheRoot)) {
      if (name.startsWith(`.tmp-${key}-`)) fs.rmSync(path.join(ctx.cacheRoot, name), { recursive: true, force: true });
    }

    const pipWay = { name: `pip wheel torch==${ctx.version}+${ctx.variant}`, run: (tmp) => fetchWithPip(ctx, tmp) };
    const zipUrl = libtorchZipUrl(ctx);
    const zipWay = { name: `libtorch zip ${zipUrl}`, run: (tmp) => fetchZip(ctx, tmp, zipUrl) };
    // CUDA torch wheels need the separate nvidia-* wheels at run time; the libtorch zip bundles them, so try it first.
    const ways = ctx.variant === 'cpu' ? [pipWay, zipWay] : [zipWay, pipWay];
    for (const way of ways) {
      // Temp dir next to the target: same filesystem, so the final rename is atomic.
      const tmp = fs.mkdtempSync(path.join(ctx.cacheRoot, `.tmp-${key}-`));
      const started = Date.now();
      try {
        ctx.log(`fetching libtorch ${key}: ${way.name}`);
        const { root, from, source } = await way.run(tmp);
        const info = inspectLibtorch(root, fs);
        if (!info.ok) throw new Error(info.problem);
        if (info.version !== ctx.version) throw new Error(`got libtorch ${info.fullVersion}, expected ${ctx.version}`);
        if (!variantMatches(ctx.variant, info.variant)) throw new Error(`got variant ${info.variant}, expected ${ctx.variant}`);
        // The marker is written last: its presence is what makes the cache complete.
        const marker = { version: ctx.version, variant: info.variant, fullVersion: info.fullVersion, source, from, date: new Date().toISOString() };
        const fd = fs.openSync(path.join(root, MARKER), 'w');
        try {
          fs.writeSync(fd, `${JSON.stringify(marker, null, 2)}\n`);
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
        try {
          fs.renameSync(root, finalDir);
        } catch (e) {
          // Only possible if the lock was (wrongly) broken and someone else finished first: use theirs.
          const theirs = fromCache(ctx);
          if (theirs.result) return { result: theirs.result, reasons };
          throw e;
        }
        const done = fromCache(ctx);
        if (!done.result) throw new Error(`cache check after fetch failed: ${done.reason}`);
        ctx.log(`libtorch ${key} fetched into ${finalDir} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        return { result: { ...done.result, source: 'fetched' }, reasons };
      } catch (e) {
        reasons.push(`fetch (${way.name}): ${e.message}`);
        ctx.log(`fetch failed (${way.name}): ${e.message}`);
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    }
    return { result: null, reasons };
  } finally {
    lock.release();
  }
}

async function findPip(ctx) {
  const runners = [...ctx.pythons.map((py) => [py, '-m', 'pip']), ['pip3'], ['pip']];
  const tried = [];
  for (const runner of runners) {
    const r = await ctx.exec(runner[0], [...runner.slice(1), '--version'], { timeoutMs: 60_000, env: ctx.env });
    if (r.code === 0) return runner;
    tried.push(execFailure(runner.join(' '), r));
  }
  throw new Error(`no pip: ${tried.join('; ')}`);
}

async function fetchWithPip(ctx, tmp) {
  const pip = await findPip(ctx);
  const dl = path.join(tmp, 'download');
  ctx.fs.mkdirSync(dl);
  const spec = `torch==${ctx.version}+${ctx.variant}`;
  const indexUrl = ctx.env.PEFT_NODE_TORCH_INDEX_URL || `https://download.pytorch.org/whl/${ctx.variant}`;
  const common = ['download', spec, '--no-deps', '--only-binary=:all:', '-d', dl, '--disable-pip-version-check'];
  // First offline (pip's configured find-links / local wheel stores answer in seconds, and no retries against an
  // unreachable index), then the PyTorch index, with bounded retries.
  const attempts = [
    { label: '--no-index', args: ['--no-index'] },
    { label: `--extra-index-url ${indexUrl}`, args: ['--extra-index-url', indexUrl, '--retries', '1', '--timeout', '30'] },
  ];
  // PyPI's own torch wheel (no local tag: "torch==2.14.1") is a CUDA build (13.0 for 2.14); a local wheel store or
  // PyPI mirror may only have that one. Only for CUDA variants, and the variant is checked after extraction
  // (torch/version.py's `cuda`), so a wheel of another CUDA version is rejected, not used.
  if (/^cu\d+$/.test(ctx.variant)) {
    attempts.push({ label: '(no local version tag, pip\'s configured indexes)', spec: `torch==${ctx.version}`, args: ['--retries', '1', '--timeout', '30'] });
  }
  const failures = [];
  for (const attempt of attempts) {
    const wanted = attempt.spec || spec;
    const cmdline = `${pip.join(' ')} download ${wanted} ${attempt.label}`;
    ctx.log(`running ${cmdline}`);
    const args = [...common.map((a) => (a === spec ? wanted : a)), ...attempt.args];
    const r = await ctx.exec(pip[0], [...pip.slice(1), ...args], { timeoutMs: ctx.pipTimeoutMs, env: ctx.env });
    const wheel = (ctx.fs.existsSync(dl) ? ctx.fs.readdirSync(dl) : []).find((f) => /^torch-.*\.whl$/.test(f));
    if (r.code === 0 && wheel) {
      const x = path.join(tmp, 'x');
      await extractZip(ctx, path.join(dl, wheel), x, ['torch/lib/', 'torch/include/', 'torch/share/', 'torch/version.py']);
      ctx.fs.rmSync(dl, { recursive: true, force: true }); // free the disk early (a CUDA wheel is GBs)
      return { root: path.join(x, 'torch'), from: wheel, source: 'pip' };
    }
    failures.push(r.code === 0 ? `${cmdline}: no torch wheel downloaded` : execFailure(cmdline, r));
  }
  throw new Error(failures.join('; '));
}

function libtorchZipUrl(ctx) {
  if (ctx.env.PEFT_NODE_LIBTORCH_URL) return ctx.env.PEFT_NODE_LIBTORCH_URL;
  // cxx11 ABI: since 2.7 the only ABI PyTorch ships, and the one our build uses.
  return `https://download.pytorch.org/libtorch/${ctx.variant}/libtorch-shared-with-deps-${ctx.version}%2B${ctx.variant}.zip`;
}

async function fetchZip(ctx, tmp, url) {
  const zip = path.join(tmp, 'libtorch.zip');
  await ctx.download(url, zip, { log: ctx.log, fs: ctx.fs });
  const x = path.join(tmp, 'x');
  await extractZip(ctx, zip, x, ['libtorch/lib/', 'libtorch/include/', 'libtorch/share/', 'libtorch/build-version']);
  ctx.fs.rmSync(zip, { force: true });
  return { root: path.join(x, 'libtorch'), from: url, source: 'zip' };
}

/** Downloads url (http(s)://, file:// or a local path) to dest, following redirects, with progress on the log. */
async function downloadUrl(url, dest, { log = defaultLog, fs = realFs } = {}) {
  if (/^file:/.test(url) || !/^[a-z]+:\/\//i.test(url)) {
    const src = /^file:/.test(url) ? require('url').fileURLToPath(url) : path.resolve(url);
    fs.copyFileSync(src, dest);
    return;
  }
  const { pipeline } = require('stream/promises');
  let current = url;
  for (let hop = 0; hop < 10; hop++) {
    const res = await new Promise((resolve, reject) => {
      const mod = current.startsWith('https:') ? require('https') : require('http');
      const req = mod.get(current, { headers: { 'user-agent': 'peft-node' } }, resolve);
      req.on('error', reject);
      req.setTimeout(60_000, () => req.destroy(new Error(`no data for 60 s from ${current}`)));
    });
    if ([301, 302, 303, 307, 308].includes(res.statusCode) && res.headers.location) {
      res.resume();
      current = new URL(res.headers.location, current).href;
      continue;
    }
    if (res.statusCode !== 200) {
      res.resume();
      throw new Error(`HTTP ${res.statusCode} for ${current}`);
    }
    const total = Number(res.headers['content-length']) || 0;
    let got = 0;
    let lastLog = Date.now();
    res.on('data', (chunk) => {
      got += chunk.length;
      if (Date.now() - lastLog > 10_000) {
        lastLog = Date.now();
        log(`downloaded ${(got / 1e6).toFixed(0)}${total ? ` of ${(total / 1e6).toFixed(0)}` : ''} MB`);
      }
    });
    await pipeline(res, fs.createWriteStream(dest));
    if (total && got !== total) throw new Error(`download truncated: ${got} of ${total} bytes from ${current}`);
    return;
  }
  throw new Error(`too many redirects from ${url}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Zip extraction: unzip, else python3's zipfile, else a small Node reader (slim images often have neither).
// Only entries under `prefixes` are extracted (a wheel also carries Python sources we do not need).

async function extractZip(ctx, archive, dest, prefixes) {
  ctx.fs.mkdirSync(dest, { recursive: true });
  const failures = [];
  const patterns = prefixes.map((p) => (p.endsWith('/') ? `${p}*` : p));
  const u = await ctx.exec('unzip', ['-q', '-o', archive, ...patterns, '-d', dest], { timeoutMs: ctx.extractTimeoutMs, env: ctx.env });
  // 11 = some pattern matched nothing (an optional file such as build-version); the result is validated afterwards.
  if (u.code === 0 || u.code === 11) return 'unzip';
  failures.push(execFailure('unzip', u));
  const pyScript = [
    'import sys, zipfile',
    'z = zipfile.ZipFile(sys.argv[1]); pre = tuple(sys.argv[3:])',
    'z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(pre)])',
  ].join('\n');
  for (const py of ctx.pythons) {
    const r = await ctx.exec(py, ['-c', pyScript, archive, dest, ...prefixes], { timeoutMs: ctx.extractTimeoutMs, env: ctx.env });
    if (r.code === 0) return 'python';
    failures.push(execFailure(`${py} zipfile`, r));
  }
  try {
    await extractZipNode(archive, dest, prefixes, ctx.fs);
    return 'node';
  } catch (e) {
    failures.push(`node zip reader: ${e.message}`);
  }
  throw new Error(`cannot extract ${archive}: ${failures.join('; ')}`);
}

/** Minimal zip reader (stored/deflate, zip64) over Node streams; enough for wheels and the libtorch zip. */
async function extractZipNode(archive, dest, prefixes, fs = realFs) {
  const zlib = require('zlib');
  const { pipeline } = require('stream/promises');
  const { Transform } = require('stream');
  const fd = fs.openSync(archive, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const read = (pos, len) => {
      const b = Buffer.alloc(len);
      let off = 0;
      while (off < len) {
        const n = fs.readSync(fd, b, off, len - off, pos + off);
        if (n === 0) throw new Error('unexpected end of zip');
        off += n;
      }
      return b;
    };
    const tailLen = Math.min(size, 65_557);
    const tail = read(size - tailLen, tailLen);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new Error('not a zip file (no end of central directory)');
    let count = tail.readUInt16LE(eocd + 10);
    let cdSize = tail.readUInt32LE(eocd + 12);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      const locPos = size - tailLen + eocd - 20;
      const loc = read(locPos, 20);
      if (loc.readUInt32LE(0) !== 0x07064b50) throw new Error('zip64 locator missing');
      const rec = read(Number(loc.readBigUInt64LE(8)), 56);
      if (rec.readUInt32LE(0) !== 0x06064b50) throw new Error('zip64 end record missing');
      count = Number(rec.readBigUInt64LE(32));
      cdSize = Number(rec.readBigUInt64LE(40));
      cdOffset = Number(rec.readBigUInt64LE(48));
    }
    const cd = read(cdOffset, cdSize);
    const root = path.resolve(dest);
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (cd.readUInt32LE(p) !== 0x02014b50) throw new Error('bad central directory entry');
      const method = cd.readUInt16LE(p + 10);
      const crc = cd.readUInt32LE(p + 16);
      let compSize = cd.readUInt32LE(p + 20);
      let size0 = cd.readUInt32LE(p + 24);
      const nameLen = cd.readUInt16LE(p + 28);
      const extraLen = cd.readUInt16LE(p + 30);
      const commentLen = cd.readUInt16LE(p + 32);
      const attr = cd.readUInt32LE(p + 38) >>> 16;
      let localOff = cd.readUInt32LE(p + 42);
      const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
      // zip64 extra field: the 64-bit values appear in this order, only for fields saturated above.
      let e = p + 46 + nameLen;
      const eEnd = e + extraLen;
      while (e + 4 <= eEnd) {
        const id = cd.readUInt16LE(e);
        const len = cd.readUInt16LE(e + 2);
        if (id === 0x0001) {
          let q = e + 4;
          if (size0 === 0xffffffff) (size0 = Number(cd.readBigUInt64LE(q))), (q += 8);
          if (compSize === 0xffffffff) (compSize = Number(cd.readBigUInt64LE(q))), (q += 8);
          if (localOff === 0xffffffff) localOff = Number(cd.readBigUInt64LE(q));
        }
        e += 4 + len;
      }
      p += 46 + nameLen + extraLen + commentLen;
      if (!prefixes.some((pre) => name.startsWith(pre))) continue;
      const target = path.resolve(root, name);
      if (!target.startsWith(root + path.sep) || name.includes('\\')) throw new Error(`unsafe path in zip: ${name}`);
      if (name.endsWith('/')) {
        fs.mkdirSync(target, { recursive: true });
        continue;
      }
      fs.mkdirSync(path.dirname(target), { recursive: true });
      const lh = read(localOff, 30);
      if (lh.readUInt32LE(0) !== 0x04034b50) throw new Error(`bad local header for ${name}`);
      const dataStart = localOff + 30 + lh.readUInt16LE(26) + lh.readUInt16LE(28);
      if ((attr & 0o170000) === 0o120000) {
        // Symlink: its data is the link target; keep it inside dest.
        const linkTarget = method === 0 ? read(dataStart, compSize).toString() : zlib.inflateRawSync(read(dataStart, compSize)).toString();
        if (path.isAbsolute(linkTarget) || !path.resolve(path.dirname(target), linkTarget).startsWith(root + path.sep)) {
          throw new Error(`unsafe symlink in zip: ${name} -> ${linkTarget}`);
        }
        fs.rmSync(target, { force: true });
        fs.symlinkSync(linkTarget, target);
        continue;
      }
      if (method !== 0 && method !== 8) throw new Error(`unsupported compression method ${method} for ${name}`);
      let written = 0;
      let sum = 0;
      const check = new Transform({
        transform(chunk, _enc, cb) {
          written += chunk.length;
          if (zlib.crc32) sum = zlib.crc32(chunk, sum);
          cb(null, chunk);
        },
      });
      const src = fs.createReadStream(null, { fd, start: dataStart, end: dataStart + compSize - 1, autoClose: false });
      const stages = compSize === 0 ? [] : [src, ...(method === 8 ? [zlib.createInflateRaw()] : [])];
      if (stages.length) await pipeline(...stages, check, fs.createWriteStream(target));
      else fs.writeFileSync(target, '');
      if (written !== size0) throw new Error(`size mismatch for ${name}: ${written} != ${size0}`);
      if (zlib.crc32 && written && sum >>> 0 !== crc) throw new Error(`CRC mismatch for ${name}`);
      if (attr & 0o777) fs.chmodSync(target, attr & 0o777);
    }
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Entry point

/**
 * Finds libtorch (see the header comment for the order). Resolves
 * { root, version, fullVersion, variant, cuda, source: "env"|"python"|"cache"|"fetched", torchDir, libDir, includeDirs }.
 * Rejects with code ERR_LIBTORCH_NOT_FOUND (every way failed; err.tried lists them) or ERR_LIBTORCH_INVALID (an
 * explicit PEFT_NODE_LIBTORCH/LIBTORCH is unusable: an explicit choice is never silently replaced).
 */
async function locateLibtorch(opts = {}) {
  const ctx = makeContext(opts);
  const tried = [];

  const envName = ['PEFT_NODE_LIBTORCH', 'LIBTORCH'].find((n) => ctx.env[n]);
  if (envName) return fromEnv(ctx, envName);
  tried.push('PEFT_NODE_LIBTORCH / LIBTORCH: not set');

  const py = await fromPython(ctx);
  if (py.result) return py.result;
  tried.push(`Python torch ${ctx.version}: ${py.reasons.join('; ') || 'no python to ask'}`);

  const cached = fromCache(ctx);
  if (cached.result) return cached.result;
  tried.push(`cache ${cached.reason}`);

  if (!ctx.allowFetch) {
    tried.push('fetch: disabled (--no-fetch or PEFT_NODE_NO_FETCH=1)');
  } else {
    const fetched = await fetchIntoCache(ctx);
    if (fetched.result) return fetched.result;
    tried.push(...fetched.reasons);
  }

  const key = cacheKey(ctx);
  const msg = [
    `cannot find libtorch ${ctx.version} (${ctx.variant}). Tried, in order:`,
    ...tried.map((t, i) => `  ${i + 1}. ${t}`),
    'To fix, do one of:',
    `  - set PEFT_NODE_LIBTORCH to a libtorch ${ctx.version} dir (an unzipped ${libtorchZipUrl(ctx)}, or <site-packages>/torch);`,
    `  - pip install torch==${ctx.version}+${ctx.variant} --index-url https://download.pytorch.org/whl/${ctx.variant};`,
    `  - with network access, run \`node node_modules/peft-node/scripts/libtorch.js install\` (fills ${path.join(ctx.cacheRoot, key)});`,
    '  - behind a mirror/proxy, set PEFT_NODE_LIBTORCH_URL to the libtorch zip (http(s)://, file:// or a path).',
  ].join('\n');
  throw errorWithCode(msg, ERR_NOT_FOUND, { tried });
}

// ---------------------------------------------------------------------------------------------------------------
// CLI

function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--no-fetch') args.noFetch = true;
    else if (a === '--json') args.json = true;
    else if (a === '--print' || a === '--variant' || a === '--version') args[a.slice(2)] = argv[++i];
    else if (/^--(print|variant|version)=/.test(a)) args[a.slice(2, a.indexOf('='))] = a.slice(a.indexOf('=') + 1);
    else if (a === '-h' || a === '--help') args.help = true;
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else args._.push(a);
  }
  return args;
}

const USAGE = `usage:
  node scripts/libtorch.js locate [--no-fetch] [--json] [--print root|lib|include|torch-dir|version|variant|cuda|defines]
  node scripts/libtorch.js install [--variant cpu|cu126|...] [--version X.Y.Z]`;

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`${e.message}\n${USAGE}\n`);
    return 2;
  }
  // `--print x` without a command means locate (shorter in binding.gyp).
  const cmd = args._[0] || (args.print ? 'locate' : null);
  if (args.help || !['locate', 'install'].includes(cmd)) {
    process.stderr.write(`${USAGE}\n`);
    return args.help ? 0 : 2;
  }
  const opts = { variant: args.variant, version: args.version, allowFetch: !args.noFetch };
  let result;
  try {
    if (cmd === 'install') {
      // Always fill the cache, even if an env dir or a Python torch would be found.
      const ctx = makeContext(opts);
      const cached = fromCache(ctx);
      if (cached.result) {
        defaultLog(`libtorch ${cacheKey(ctx)} already in the cache: ${cached.result.root}`);
        result = cached.result;
      } else {
        const fetched = await fetchIntoCache(ctx);
        if (!fetched.result) throw errorWithCode(`fetch failed:\n  ${fetched.reasons.join('\n  ')}`, ERR_NOT_FOUND);
        result = fetched.result;
      }
    } else {
      result = await locateLibtorch(opts);
    }
  } catch (e) {
    process.stderr.write(`peft-node: ${e.message}\n`);
    return 1;
  }
  if (args.print) {
    const one = {
      root: result.root,
      lib: result.libDir,
      include: result.includeDirs.join(' '),
      'torch-dir': result.torchDir,
      version: result.version,
      variant: result.variant,
      cuda: result.cuda ? '1' : '0',
      defines: result.compileDefinitions.join(' '),
    }[args.print];
    if (one === undefined) {
      process.stderr.write(`unknown --print value ${args.print}\n${USAGE}\n`);
      return 2;
    }
    process.stdout.write(`${one}\n`);
  } else {
    if (!args.json) defaultLog(`libtorch ${result.version} (${result.variant}) from ${result.source}: ${result.root}`);
    process.stdout.write(`${JSON.stringify(result, null, args.json ? 0 : 2)}\n`);
  }
  return 0;
}

module.exports = {
  locateLibtorch,
  inspectLibtorch,
  resolveRoot,
  defaultCacheRoot,
  extractZipNode,
  downloadUrl,
  PINNED_VERSION,
  PINNED_VARIANT,
  MARKER,
  ERR_NOT_FOUND,
  ERR_INVALID,
  main,
};

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e) => {
      process.stderr.write(`peft-node: ${e.stack || e}\n`);
      process.exitCode = 1;
    },
  );
}
