#!/usr/bin/env node
'use strict';
// Builds the prebuilt binary that ships in the npm tarball: prebuilds/<platform>-<arch>-<variant>/peft-node.napi.glibc.node
// (the variant is the directory, the file name follows node-gyp-build's <name>.<tags>.node rules) and build-info.json
// beside it. The binary has no RUNPATH and is stripped: at run time lib/runtime/loader.ts locates a libtorch of the
// same X.Y.Z and variant and loads it before the addon.
//
//   node scripts/prebuild.js [--variant cpu|cu130|...] [--version X.Y.Z] [--jobs N] [--no-test]
//   node scripts/prebuild.js --check [--variant V]    exit 1 unless the prebuilt exists and matches native/ (prepublishOnly)
//
// libtorch: PEFT_NODE_LIBTORCH / LIBTORCH, else scripts/libtorch/locate.js's order for the variant (pinned version unless
// --version); for a CUDA variant without --version, a complete cache entry <version>-<variant> of any supported
// version is used before fetching the pin. The build goes to build-prebuild/<variant>/ (incremental; wiped when
// the libtorch changes), never to build/ (the local build others use). Default 1 compile job (2-core machines
// shared with other builds); CMAKE_BUILD_PARALLEL_LEVEL or --jobs for more.
//
// Verification: no absolute libtorch path in the binary, libtorch_cuda among its needed libraries for a CUDA
// variant, then a test load as the loader makes it (scripts/libtorch/test-load.js: in a child, preload libtorch,
// require, info()) and a forward on assets/tiny-bloom. A CUDA variant whose CUDA runtime libraries are missing here cannot be test-loaded: a warning.

const path = require('path');
const fs = require('fs');
const os = require('os');
const crypto = require('crypto');
const { spawn, spawnSync } = require('child_process');
const lt = require('./libtorch/index.js');

const ROOT = path.resolve(__dirname, '..');
const BINARY_NAME = 'peft-node.napi.glibc.node';
const log = (msg) => process.stderr.write(`peft-node prebuild: ${msg}\n`);
const secs = (t0) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

function parseArgs(argv) {
  const a = { variant: process.env.PEFT_NODE_VARIANT || 'cpu', version: null, jobs: null, test: true, check: false };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const val = () => (x.includes('=') ? x.slice(x.indexOf('=') + 1) : argv[++i]);
    if (x.startsWith('--variant')) a.variant = val();
    else if (x.startsWith('--version')) a.version = val();
    else if (x.startsWith('--jobs')) a.jobs = Number(val());
    else if (x === '--no-test') a.test = false;
    else if (x === '--check') a.check = true;
    else if (x === '-h' || x === '--help') a.help = true;
    else throw new Error(`unknown argument ${x}`);
  }
  if (!/^(cpu|cu\d+)$/.test(a.variant)) throw new Error(`--variant must be cpu or cuNNN (e.g. cu130), not ${a.variant}`);
  return a;
}

function run(cmd, args, opts = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], ...opts });
    child.on('error', (e) => resolve({ code: null, error: e }));
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
}

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  return r.status === 0 ? r.stdout.trim() : null;
}

function variantDir(variant) {
  return lt.prebuiltDir(ROOT, variant);
}

/** Which libtorch to build against. */
async function findLibtorch(args) {
  const explicit = process.env.PEFT_NODE_LIBTORCH || process.env.LIBTORCH;
  if (!explicit && args.variant !== 'cpu' && !args.version) {
    // Any complete cache entry of this CUDA variant (the local wheel store may have another version than the pin).
    const [version] = lt.cachedVersions(lt.defaultCacheRoot(process.env), args.variant);
    if (version) {
      log(`using the cached libtorch ${version}-${args.variant} (pass --version to choose)`);
      return lt.locateLibtorch({ variant: args.variant, version, allowFetch: false, log });
    }
  }
  return lt.locateLibtorch({ variant: args.variant, version: args.version || undefined, log });
}

function maxVersion(text, re) {
  const cmp = (a, b) => {
    for (let i = 0; i < Math.max(a.length, b.length); i++) if ((a[i] || 0) !== (b[i] || 0)) return (a[i] || 0) - (b[i] || 0);
    return 0;
  };
  let best = null;
  for (const m of text.matchAll(re)) {
    const v = m.slice(1).filter((x) => x !== undefined).map(Number);
    if (!best || cmp(v, best) > 0) best = v;
  }
  return best ? best.join('.') : null;
}

/** The newest GLIBC_x.y / GLIBCXX_3.4.z symbol version the binary references: the oldest system it can load on. */
function symbolVersionsRequired(buf) {
  const text = buf.toString('latin1');
  return {
    glibc: maxVersion(text, /GLIBC_(\d+)\.(\d+)(?:\.(\d+))?(?![\d.])/g),
    glibcxx: maxVersion(text, /GLIBCXX_(\d+)\.(\d+)\.(\d+)(?![\d.])/g),
  };
}

function compilerVersion(buildDir) {
  const cache = fs.existsSync(path.join(buildDir, 'CMakeCache.txt')) ? fs.readFileSync(path.join(buildDir, 'CMakeCache.txt'), 'utf8') : '';
  const cxx = (/^CMAKE_CXX_COMPILER:\w+=(.*)$/m.exec(cache) || [])[1] || 'c++';
  return (sh(cxx, ['--version']) || cxx).split('\n')[0];
}

function gitRevision() {
  const rev = sh('git', ['rev-parse', 'HEAD'], { cwd: ROOT });
  if (!rev) return null;
  const dirty = sh('git', ['status', '--porcelain', '--', 'native', 'CMakeLists.txt'], { cwd: ROOT });
  return dirty ? `${rev}+dirty` : rev;
}

/** --check: the prebuilt(s) exist and were built from the current native/ sources (prepublishOnly). Without an
 * explicit --variant: every variant directory present, and cpu at least. */
function check(args, explicitVariant) {
  const here = lt.nativeSourceHash(ROOT);
  const present = lt.prebuiltVariants(ROOT);
  const variants = explicitVariant ? [args.variant] : [...new Set(['cpu', ...present])];
  let bad = 0;
  for (const variant of variants) {
    const dir = variantDir(variant);
    let info = null;
    try {
      info = JSON.parse(fs.readFileSync(path.join(dir, 'build-info.json'), 'utf8'));
    } catch {
      /* missing */
    }
    const file = info && path.join(dir, info.file);
    if (!info || !fs.existsSync(file)) {
      log(`no prebuilt in ${path.relative(ROOT, dir)}: run \`npm run build:prebuilt${variant === 'cpu' ? '' : ` -- --variant ${variant}`}\``);
      bad++;
    } else if (info.sourceHash !== here) {
      log(`${path.relative(ROOT, file)} was built from other native sources (${info.git || 'unknown revision'}): rebuild it, or delete ${path.relative(ROOT, dir)}`);
      bad++;
    } else {
      log(`${path.relative(ROOT, file)} is current (libtorch ${info.libtorch.fullVersion || info.libtorch.version}, built ${info.date})`);
    }
  }
  return bad ? 1 : 0;
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    log(e.message);
    return 2;
  }
  if (args.help) {
    process.stderr.write(fs.readFileSync(__filename, 'utf8').split('\n').slice(2, 20).join('\n') + '\n');
    return 0;
  }
  if (args.check) return check(args, argv.some((a) => a.startsWith('--variant')));
  if (process.platform !== 'linux') {
    log(`prebuilt binaries are made on Linux only (this is ${process.platform})`);
    return 1;
  }
  const t0 = Date.now();
  const libtorch = await findLibtorch(args);
  log(`libtorch ${libtorch.fullVersion || libtorch.version} (${libtorch.variant}) from ${libtorch.source}: ${libtorch.root}`);
  if (libtorch.variant !== args.variant && !(args.variant.startsWith('cu') && libtorch.cuda)) {
    log(`the libtorch found is ${libtorch.variant}, not ${args.variant}`);
    return 1;
  }
  if (args.variant === 'cpu' && libtorch.version !== lt.PINNED_VERSION) {
    log(`warning: building the CPU prebuilt against ${libtorch.version}, not the pinned ${lt.PINNED_VERSION}: it will only load with ${libtorch.version}`);
  }

  // 1. Build (cmake-js, incremental) in build-prebuild/<variant>.
  const buildDir = path.join(ROOT, 'build-prebuild', args.variant);
  const stampFile = path.join(buildDir, 'peft-node-prebuild.json');
  let stamp = null;
  try {
    stamp = JSON.parse(fs.readFileSync(stampFile, 'utf8'));
  } catch {
    /* first build */
  }
  if (stamp && stamp.torchDir !== libtorch.torchDir) {
    log(`libtorch changed (${stamp.torchDir} -> ${libtorch.torchDir}): clean build`);
    fs.rmSync(buildDir, { recursive: true, force: true });
  }
  fs.mkdirSync(buildDir, { recursive: true });
  fs.writeFileSync(stampFile, `${JSON.stringify({ torchDir: libtorch.torchDir })}\n`);
  const jobs = args.jobs || Number(process.env.CMAKE_BUILD_PARALLEL_LEVEL) || 1;
  // What the binary is compiled from: hashed before the build, checked again after it (an edit during the build
  // would make a binary of neither version).
  const sourceHash = lt.nativeSourceHash(ROOT);
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [ROOT] });
  const common = ['--directory', ROOT, '--out', buildDir, `--CDTorch_DIR=${libtorch.torchDir}`, '--CDPEFT_NODE_PREBUILD=ON'];
  const tb = Date.now();
  for (const cmd of ['configure', 'build']) {
    const extra = cmd === 'build' ? ['--parallel', String(jobs)] : [];
    const r = await run(process.execPath, [cmakeJs, cmd, ...common, ...extra], {
      cwd: ROOT,
      env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: String(jobs) },
    });
    if (r.code !== 0) {
      log(`cmake-js ${cmd} failed (${r.error ? r.error.message : r.signal || `exit ${r.code}`})`);
      return 1;
    }
  }
  if (lt.nativeSourceHash(ROOT) !== sourceHash) {
    log('native/ changed during the build: the binary may mix two versions; run `npm run build:prebuilt` again');
    return 1;
  }
  const built = path.join(buildDir, 'Release', 'peft_node.node');
  if (!fs.existsSync(built)) {
    log(`no ${built} after the build`);
    return 1;
  }
  const buildSeconds = (Date.now() - tb) / 1000;
  log(`built in ${buildSeconds.toFixed(1)} s with ${jobs} job(s)`);

  // 2. Check what was linked.
  const buf = fs.readFileSync(built);
  for (const leak of [libtorch.root, fs.realpathSync(libtorch.root)]) {
    if (buf.includes(Buffer.from(leak))) {
      log(`${built} contains the build machine's libtorch path ${leak} (an RPATH?): not relocatable`);
      return 1;
    }
  }
  if (args.variant !== 'cpu' && !buf.includes(Buffer.from('libtorch_cuda.so'))) {
    log(`${built} does not link libtorch_cuda.so: CUDA would not load`);
    return 1;
  }

  // 3. Install into prebuilds/ with build-info.json (binary first, info last: the info is the commit point).
  const dir = variantDir(args.variant);
  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { force: true, recursive: true });
  const dest = path.join(dir, BINARY_NAME);
  fs.copyFileSync(built, dest);
  const req = symbolVersionsRequired(buf);
  const report = process.report && process.report.getReport ? process.report.getReport() : null;
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const info = {
    name: pkg.name,
    packageVersion: pkg.version,
    file: BINARY_NAME,
    platform: process.platform,
    arch: process.arch,
    variant: args.variant,
    libtorch: { version: libtorch.version, fullVersion: libtorch.fullVersion, variant: libtorch.variant, cuda: libtorch.cuda },
    napiVersion: (pkg.binary && pkg.binary.napi_versions && pkg.binary.napi_versions[0]) || 8,
    sourceHash,
    compiler: compilerVersion(buildDir),
    cmake: (sh('cmake', ['--version']) || '').split('\n')[0] || null,
    nodeAddonApi: require(require.resolve('node-addon-api/package.json', { paths: [ROOT] })).version,
    git: gitRevision(),
    glibc: {
      builtOn: (report && report.header && report.header.glibcVersionRuntime) || null,
      required: req.glibc,
      glibcxxRequired: req.glibcxx,
    },
    date: new Date().toISOString(),
    size: buf.length,
    sha256: crypto.createHash('sha256').update(buf).digest('hex'),
    buildSeconds: Math.round(buildSeconds * 10) / 10,
  };
  fs.writeFileSync(path.join(dir, 'build-info.json'), `${JSON.stringify(info, null, 2)}\n`);
  log(`${path.relative(ROOT, dest)}: ${(buf.length / 1e6).toFixed(2)} MB, needs glibc >= ${req.glibc}, GLIBCXX ${req.glibcxx}`);

  // 4. Test: load it as a user would (child process, libtorch preloaded, no RUNPATH) and run a forward.
  if (args.test) {
    const candidate = { kind: 'prebuilt', file: dest, preload: { ...libtorch, libDir: libtorch.libDir, source: libtorch.source }, expectVersion: libtorch.version, variant: args.variant };
    const t = lt.testLoad(candidate, { verdictDir: null });
    if (!t.ok) {
      if (args.variant !== 'cpu') {
        log(`warning: the CUDA prebuilt cannot be test-loaded here: ${t.reason}`);
      } else {
        log(`the prebuilt does not load: ${t.reason}`);
        return 1;
      }
    } else {
      const fwd = forwardSmoke(dest, libtorch);
      if (!fwd.ok) {
        log(`the prebuilt loads but a forward failed: ${fwd.reason}`);
        return 1;
      }
      log(`test load + forward on assets/tiny-bloom: ok (libtorch ${t.info && t.info.torchVersion}, loss ${fwd.loss.toFixed(6)})`);
    }
  }
  log(`done in ${secs(t0)}`);
  return 0;
}

/** A forward with labels on the embedded tiny model, through the prebuilt, in a child process. */
function forwardSmoke(file, libtorch) {
  const script = `
    const lt = require(${JSON.stringify(path.join(__dirname, 'libtorch', 'index.js'))});
    lt.preloadLibtorch(${JSON.stringify({ root: libtorch.root, libDir: libtorch.libDir, cuda: libtorch.cuda })});
    const m = require(${JSON.stringify(file)});
    (async () => {
      const model = await m.BloomModel.load(${JSON.stringify(path.join(ROOT, 'assets', 'tiny-bloom'))}, 'cpu', 'float32');
      const ids = Int32Array.from([1, 5, 9, 12, 3, 7]);
      const out = await model.forward({ inputIds: ids, batch: 1, seqLen: 6, labels: ids }, { returnLogits: true });
      await model.dispose();
      process.stdout.write(JSON.stringify({ loss: out.loss, logits: out.logits.length }) + '\\n');
    })().catch((e) => { process.stderr.write(String(e && e.message || e) + '\\n'); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) return { ok: false, reason: (r.stderr || r.error || `exit ${r.status}`).toString().trim().split('\n').slice(-3).join(' | ') };
  const out = JSON.parse(r.stdout.trim().split('\n').pop());
  if (!Number.isFinite(out.loss)) return { ok: false, reason: `loss ${out.loss}` };
  return { ok: true, loss: out.loss };
}

module.exports = { symbolVersionsRequired, BINARY_NAME, variantDir };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e) => {
      log(e.stack || String(e));
      process.exitCode = 1;
    },
  );
}
