'use strict';
// The one search order for libtorch. Build time (scripts/install.js, scripts/prebuild.js, and through them cmake;
// binding.gyp through the CLI) and run time (lib/runtime: the libtorch a prebuilt binary needs) walk the same steps:
//
//   1. PEFT_NODE_LIBTORCH or LIBTORCH: an explicit dir (an unzipped libtorch, or <site-packages>/torch). It is never
//      silently replaced: one that is not libtorch is ERR_LIBTORCH_INVALID. Build time also wants its version in
//      2.11-2.14 (PEFT_NODE_ALLOW_VERSION_MISMATCH=1 accepts any); run time takes it and its caller names a mismatch.
//   2. run time only: the libtorch `npm install` used (build/peft-node-install.json), if it has the version and variant.
//   3. a Python torch of the version and variant (PEFT_NODE_PYTHON, else python3, then python).
//   4. the cache <cacheRoot>/<version>-<variant>, only when complete (its marker is written last: cache.js).
//   5. build time only: a fetch into that cache (fetch.js); --no-fetch / PEFT_NODE_NO_FETCH=1 skip it.
//   Otherwise ERR_LIBTORCH_NOT_FOUND listing every way tried and why it failed (run time: null and that list).
//
// The steps are one generator, `search`, which yields the commands it needs run (a Python probe) and the fetch; the
// async driver (locateLibtorch) runs them with spawn, the synchronous one (locateLibtorchSync: require() cannot
// wait) with spawnSync and never fetches.

const path = require('path');
const realFs = require('fs');
const facts = require('./facts.js');
const { resolveRoot, inspectLibtorch, makeResult } = require('./inspect.js');
const { cacheKey, fromCache } = require('./cache.js');
const { defaultExec, defaultExecSync, execFailure } = require('./exec.js');
const { fetchIntoCache, libtorchZipUrl, downloadUrl } = require('./fetch.js');

const { errorWithCode, parseVersion, variantMatches, ERR_INVALID } = facts;
const ENV_NAMES = ['PEFT_NODE_LIBTORCH', 'LIBTORCH'];

/**
 * mode "build": version-checked explicit dir, fetch allowed (unless disabled); mode "run": the install record
 * (opts.installRecord, a file), no fetch, no version check of the explicit dir.
 */
function makeContext(opts = {}, mode = 'build') {
  const env = opts.env || process.env;
  const fs = opts.fs ? { ...realFs, ...opts.fs } : realFs;
  const noFetchEnv = env.PEFT_NODE_NO_FETCH === '1' || env.PEFT_NODE_NO_FETCH === 'true';
  return {
    mode,
    env,
    fs,
    exec: opts.exec || defaultExec,
    execSync: opts.execSync || defaultExecSync,
    download: opts.download || downloadUrl,
    log: opts.log || (mode === 'run' ? () => undefined : facts.defaultLog),
    version: opts.version || facts.PINNED_VERSION,
    variant: opts.variant || facts.envVariant(env),
    cacheRoot: path.resolve(opts.cacheRoot || facts.defaultCacheRoot(env)),
    installRecord: mode === 'run' ? opts.installRecord || null : null,
    allowFetch: mode === 'build' && (opts.allowFetch !== undefined ? Boolean(opts.allowFetch) : true) && !noFetchEnv,
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

// 1. Explicit directory from the environment
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
  if (ctx.mode === 'build') checkExplicitVersion(ctx, varName, dir, info);
  return makeResult(info, 'env', ctx.fs);
}

function checkExplicitVersion(ctx, varName, dir, info) {
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
    ctx.log(`warning: ${varName}: unknown libtorch version at ${info.root}, used because PEFT_NODE_ALLOW_VERSION_MISMATCH=1`);
  } else if (info.version !== ctx.version) {
    if (!facts.inSupportedRange(parsed.nums) && !allowMismatch) {
      throw errorWithCode(
        `${varName}=${dir} holds libtorch ${info.fullVersion}, but peft-node needs ${ctx.version} (builds against ` +
          `${facts.supportedRange()}). Point ${varName} at libtorch ${ctx.version}, unset it, or set ` +
          `PEFT_NODE_ALLOW_VERSION_MISMATCH=1 to try anyway.`,
        ERR_INVALID,
      );
    }
    ctx.log(`warning: ${varName} holds libtorch ${info.fullVersion}, not the pinned ${ctx.version}; results are only tested against ${ctx.version}`);
  }
}

// 2. The install record (run time)
function fromRecord(ctx) {
  const record = facts.readJson(ctx.installRecord, ctx.fs);
  const root = record && record.libtorch && record.libtorch.root;
  if (!root) return { result: null, reason: 'install record (build/peft-node-install.json): none' };
  const info = ctx.fs.existsSync(root) ? inspectLibtorch(root, ctx.fs) : null;
  if (info && info.ok && info.version === ctx.version && variantMatches(ctx.variant, info.variant)) {
    return { result: makeResult(info, 'install-record', ctx.fs) };
  }
  const what = !info ? 'gone' : !info.ok ? info.problem : `libtorch ${info.fullVersion || info.version} (${info.variant})`;
  return { result: null, reason: `the libtorch the install used, ${root}: ${what}` };
}

// 3. Python torch. Reads torch/version.py through importlib instead of `import torch`: same answer
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

function* fromPython(ctx) {
  const reasons = [];
  for (const py of ctx.pythons) {
    const r = yield { exec: [py, ['-c', PY_PROBE], { timeoutMs: ctx.pythonTimeoutMs, env: ctx.env }] };
    const why = pythonTorch(ctx, py, r);
    if (typeof why !== 'string') return { result: why, reasons };
    reasons.push(why);
  }
  return { result: null, reasons };
}

/** The located torch from one interpreter's probe output, or why not (a string). */
function pythonTorch(ctx, py, r) {
  if (r.code !== 0) return execFailure(py, r);
  let probe;
  try {
    probe = JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    return `${py}: unexpected output ${JSON.stringify(r.stdout.slice(0, 200))}`;
  }
  if (!probe.found) return `${py}: no torch module`;
  const parsed = parseVersion(probe.version);
  if (!parsed) return `${py}: torch at ${probe.dir} has unreadable version ${JSON.stringify(probe.version)}`;
  const variant = facts.variantFromLocal(parsed.local) || (probe.cuda ? facts.cudaVariant(probe.cuda) : 'cpu');
  if (parsed.base !== ctx.version || parsed.pre) return `${py}: torch ${probe.version} at ${probe.dir} is not the pinned ${ctx.version}`;
  if (!variantMatches(ctx.variant, variant)) return `${py}: torch ${probe.version} at ${probe.dir} is variant ${variant}, not ${ctx.variant}`;
  const info = inspectLibtorch(probe.dir, ctx.fs);
  if (!info.ok) return `${py}: torch ${probe.version}: ${info.problem} (a torch wheel without C++ headers/cmake files?)`;
  info.variant = variant;
  return makeResult(info, 'python', ctx.fs);
}

/** The order itself. Returns { result, tried }; yields { exec: [cmd, args, options] } and { fetch: true }. */
function* search(ctx) {
  const tried = [];
  const envName = ENV_NAMES.find((n) => ctx.env[n]);
  if (envName) return { result: fromEnv(ctx, envName), tried };
  tried.push('PEFT_NODE_LIBTORCH / LIBTORCH: not set');

  if (ctx.installRecord) {
    const rec = fromRecord(ctx);
    if (rec.result) return { result: rec.result, tried };
    tried.push(rec.reason);
  }

  const py = yield* fromPython(ctx);
  if (py.result) return { result: py.result, tried };
  tried.push(`Python torch ${ctx.version}: ${py.reasons.join('; ') || 'no python to ask'}`);

  const cached = fromCache(ctx);
  if (cached.result) return { result: cached.result, tried };
  tried.push(`cache ${cached.reason}`);

  if (ctx.mode === 'build' && !ctx.allowFetch) {
    tried.push('fetch: disabled (--no-fetch or PEFT_NODE_NO_FETCH=1)');
  } else if (ctx.allowFetch) {
    const fetched = yield { fetch: true };
    if (fetched.result) return { result: fetched.result, tried };
    tried.push(...fetched.reasons);
  }
  return { result: null, tried };
}

function notFound(ctx, tried) {
  const msg = [
    `cannot find libtorch ${ctx.version} (${ctx.variant}). Tried, in order:`,
    ...tried.map((t, i) => `  ${i + 1}. ${t}`),
    'To fix, do one of:',
    `  - set PEFT_NODE_LIBTORCH to a libtorch ${ctx.version} dir (an unzipped ${libtorchZipUrl(ctx)}, or <site-packages>/torch);`,
    `  - pip install torch==${ctx.version}+${ctx.variant} --index-url https://download.pytorch.org/whl/${ctx.variant};`,
    `  - with network access, run \`node node_modules/peft-node/scripts/libtorch.js install\` (fills ${path.join(ctx.cacheRoot, cacheKey(ctx))});`,
    '  - behind a mirror/proxy, set PEFT_NODE_LIBTORCH_URL to the libtorch zip (http(s)://, file:// or a path).',
  ].join('\n');
  return errorWithCode(msg, facts.ERR_NOT_FOUND, { tried });
}

/**
 * Build time: finds libtorch (steps 1, 3, 4, 5). Resolves a LocatedLibtorch (index.d.ts) with source
 * "env" | "python" | "cache" | "fetched". Rejects with code ERR_LIBTORCH_NOT_FOUND (every way failed; err.tried lists
 * them) or ERR_LIBTORCH_INVALID (an explicit PEFT_NODE_LIBTORCH/LIBTORCH is unusable).
 */
async function locateLibtorch(opts = {}) {
  const ctx = makeContext(opts, 'build');
  const steps = search(ctx);
  let step = steps.next();
  while (!step.done) step = steps.next(step.value.fetch ? await fetchIntoCache(ctx) : await ctx.exec(...step.value.exec));
  if (step.value.result) return step.value.result;
  throw notFound(ctx, step.value.tried);
}

/**
 * Run time: steps 1-4 without fetching, synchronously. Returns { libtorch, tried }: libtorch is null when none of
 * `version` / `variant` was found (tried says why), or the explicit dir whatever its version. Throws
 * ERR_LIBTORCH_INVALID for an explicit dir that is not libtorch.
 */
function locateLibtorchSync(opts = {}) {
  const ctx = makeContext(opts, 'run');
  const steps = search(ctx);
  let step = steps.next();
  while (!step.done) step = steps.next(ctx.execSync(...step.value.exec));
  return { libtorch: step.value.result, tried: step.value.tried };
}

/** Step 1 alone, as run time reads it: the explicit libtorch, or null when neither variable is set. */
function explicitLibtorch(opts = {}) {
  const ctx = makeContext(opts, 'run');
  const envName = ENV_NAMES.find((n) => ctx.env[n]);
  return envName ? fromEnv(ctx, envName) : null;
}

/** `libtorch install`: fills the cache for the version/variant (even when an env dir or a Python torch exists). */
async function installLibtorch(opts = {}) {
  const ctx = makeContext({ ...opts, allowFetch: true }, 'build');
  const cached = fromCache(ctx);
  if (cached.result) {
    ctx.log(`libtorch ${cacheKey(ctx)} already in the cache: ${cached.result.root}`);
    return cached.result;
  }
  const fetched = await fetchIntoCache(ctx);
  if (!fetched.result) throw errorWithCode(`fetch failed:\n  ${fetched.reasons.join('\n  ')}`, facts.ERR_NOT_FOUND);
  return fetched.result;
}

module.exports = { locateLibtorch, locateLibtorchSync, explicitLibtorch, installLibtorch };
