// The binary loader (lib/runtime/loader.ts), the prebuilt-first install (scripts/install.js) and scripts/prebuild.js's
// helpers: fake package roots in temp dirs for the decisions, real binaries (a copy of the local build, with and
// without RUNPATH) for test loads, the verdict cache and the libtorch preload. No network, nothing built here.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import {
  Candidate,
  addonReport,
  RuntimeLibtorch,
  loadAddon,
  locateLibtorchFor,
  nativeSourceHash,
  pickBinary,
  prebuiltCandidate,
  prebuiltVariants,
  resolveAddon,
  testLoad,
  wantedVariant,
} from '../lib/runtime/loader';
import { PeftNodeError } from '../lib/errors';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const lt = require('../scripts/libtorch.js');
// eslint-disable-next-line @typescript-eslint/no-var-requires
const prebuild = require('../scripts/prebuild.js');

const ROOT = path.resolve(__dirname, '..');
const PLAT = `${process.platform}-${process.arch}`;
const LOCAL_BUILD = path.join(ROOT, 'build', 'Release', 'peft_node.node');
const haveLocalBuild = fs.existsSync(LOCAL_BUILD);
const haveCmake = spawnSync('cmake', ['--version']).status === 0;

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peft-node-prebuilt-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A directory that looks like libtorch to scripts/libtorch.js (empty libraries). */
function fakeLibtorch(dir: string, version = '2.13.0+cpu', cuda = false): string {
  fs.mkdirSync(path.join(dir, 'lib'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'share', 'cmake', 'Torch'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'share', 'cmake', 'Torch', 'TorchConfig.cmake'), '# fake\n');
  fs.writeFileSync(path.join(dir, 'lib', 'libtorch.so'), '');
  if (cuda) fs.writeFileSync(path.join(dir, 'lib', 'libtorch_cuda.so'), '');
  fs.writeFileSync(path.join(dir, 'version.py'), `__version__ = '${version}'\ncuda: Optional[str] = ${cuda ? "'13.0'" : 'None'}\n`);
  return dir;
}

/** A package root: scripts/libtorch.js, native sources, and optionally a prebuilt (whose binary is a dummy). */
function fakePackage(opts: { prebuilt?: { variant?: string; version?: string; stale?: boolean } } = {}): string {
  const root = path.join(tmp, 'pkg');
  fs.mkdirSync(path.join(root, 'scripts'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'scripts', 'libtorch.js'), path.join(root, 'scripts', 'libtorch.js'));
  fs.mkdirSync(path.join(root, 'native', 'core'), { recursive: true });
  fs.writeFileSync(path.join(root, 'native', 'core', 'a.cpp'), 'int a() { return 1; }\n');
  if (opts.prebuilt) {
    const variant = opts.prebuilt.variant ?? 'cpu';
    const dir = path.join(root, 'prebuilds', `${PLAT}-${variant}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'peft-node.napi.glibc.node'), 'not a real binary');
    const version = opts.prebuilt.version ?? '2.13.0';
    const info = {
      name: 'peft-node',
      file: 'peft-node.napi.glibc.node',
      platform: process.platform,
      arch: process.arch,
      variant,
      libtorch: { version, fullVersion: `${version}+${variant}`, variant },
      sourceHash: opts.prebuilt.stale ? 'f'.repeat(64) : nativeSourceHash(root),
    };
    fs.writeFileSync(path.join(dir, 'build-info.json'), JSON.stringify(info));
  }
  return root;
}

/** An environment that finds nothing by itself: an empty cache, no Python. */
function bareEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, HOME: tmp, PEFT_NODE_CACHE: path.join(tmp, 'cache'), PEFT_NODE_PYTHON: path.join(tmp, 'no-python'), PEFT_NODE_NO_FETCH: '1', ...extra };
}

function runtimeLt(root: string, version = '2.13.0', variant = 'cpu'): RuntimeLibtorch {
  return { root, libDir: path.join(root, 'lib'), version, fullVersion: `${version}+${variant}`, variant, cuda: variant !== 'cpu', source: 'env' };
}

describe('prebuilt selection', () => {
  test('the variant is a directory; the file is picked by node-gyp-build 4.8 tag rules', () => {
    const dir = path.join(tmp, `${PLAT}-cpu`);
    fs.mkdirSync(dir);
    for (const f of ['peft-node.napi.glibc.node', 'peft-node.napi.musl.node', 'peft-node.abi1.node', 'build-info.json', 'libextra.so']) {
      fs.writeFileSync(path.join(dir, f), '');
    }
    expect(path.basename(pickBinary(dir)!)).toBe(process.env.LIBC === 'musl' ? 'peft-node.napi.musl.node' : 'peft-node.napi.glibc.node');
    expect(pickBinary(path.join(tmp, 'missing'))).toBeNull();
    // node-gyp-build itself never takes a variant dir for the plain <platform>-<arch> one (3 dash-separated parts).
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    expect(require('node-gyp-build').parseTuple(`${PLAT}-cpu`)).toBeUndefined();
  });

  test('variant directories are listed for this platform only', () => {
    for (const d of [`${PLAT}-cpu`, `${PLAT}-cu130`, PLAT, 'win32-x64-cpu']) fs.mkdirSync(path.join(tmp, 'prebuilds', d), { recursive: true });
    expect(prebuiltVariants(tmp)).toEqual(['cpu', 'cu130']);
  });

  test('a fitting prebuilt preloads the libtorch given; each mismatch is named', () => {
    const root = fakePackage({ prebuilt: {} });
    const good = prebuiltCandidate('cpu', { root, libtorch: runtimeLt('/x/libtorch') });
    expect(good.candidate).toMatchObject({ kind: 'prebuilt', expectVersion: '2.13.0', preload: { root: '/x/libtorch' } });
    expect(good.attempt.ok).toBe(true);

    const oldVersion = prebuiltCandidate('cpu', { root, libtorch: runtimeLt('/x/lt212', '2.12.0') });
    expect(oldVersion.candidate).toBeNull();
    expect(oldVersion.attempt).toMatchObject({ libtorchMissing: true });
    expect(oldVersion.attempt.reason).toMatch(/needs libtorch 2\.13\.0 \(cpu\), but the libtorch found \(env: \/x\/lt212\) is 2\.12\.0\+cpu/);

    const cuda = prebuiltCandidate('cpu', { root, libtorch: runtimeLt('/x/cu', '2.13.0', 'cu130') });
    expect(cuda.attempt.reason).toMatch(/is 2\.13\.0\+cu130 \(cu130\)/);

    const none = prebuiltCandidate('cu130', { root, libtorch: runtimeLt('/x/cu', '2.13.0', 'cu130') });
    expect(none.attempt.reason).toBe(`no prebuilt for ${PLAT}-cu130 (there are: cpu)`);
  });

  test('a prebuilt built from other native sources is stale', () => {
    const root = fakePackage({ prebuilt: { stale: true } });
    const r = prebuiltCandidate('cpu', { root, libtorch: runtimeLt('/x/libtorch') });
    expect(r.candidate).toBeNull();
    expect(r.attempt.reason).toMatch(/built from other native sources .*npm run build:prebuilt/);
    // Editing a source makes a current prebuilt stale too.
    const fresh = fakePackage({ prebuilt: {} });
    expect(prebuiltCandidate('cpu', { root: fresh, libtorch: runtimeLt('/x/libtorch') }).candidate).not.toBeNull();
    fs.appendFileSync(path.join(fresh, 'native', 'core', 'a.cpp'), '// edited\n');
    expect(prebuiltCandidate('cpu', { root: fresh, libtorch: runtimeLt('/x/libtorch') }).candidate).toBeNull();
  });

  test('the wanted variant: PEFT_NODE_VARIANT, an explicit libtorch, the install record, else cpu', () => {
    const root = fakePackage();
    expect(wantedVariant({ root, env: bareEnv() })).toEqual({ variant: 'cpu', reason: 'default' });
    fs.mkdirSync(path.join(root, 'build'));
    fs.writeFileSync(path.join(root, 'build', 'peft-node-install.json'), JSON.stringify({ addon: 'prebuilt', variant: 'cu126' }));
    expect(wantedVariant({ root, env: bareEnv() }).variant).toBe('cu126');
    const cudaLt = fakeLibtorch(path.join(tmp, 'cuda-lt'), '2.14.1+cu130', true);
    expect(wantedVariant({ root, env: bareEnv({ PEFT_NODE_LIBTORCH: cudaLt }) }).variant).toBe('cu130');
    expect(wantedVariant({ root, env: bareEnv({ PEFT_NODE_LIBTORCH: cudaLt, PEFT_NODE_VARIANT: 'cpu' }) }).variant).toBe('cpu');
  });
});

test('addonReport (for peft-node doctor) lists prebuilts, staleness and the attempts, and never throws', () => {
  const root = fakePackage({ prebuilt: { stale: true } });
  const r = addonReport({ root, env: bareEnv({ LIBTORCH: path.join(tmp, 'not-libtorch') }), verdictDir: null });
  expect(r).toMatchObject({ platform: PLAT, variant: 'cpu', loaded: null, chosen: null, installRecord: null });
  expect(r.prebuilts).toEqual([expect.objectContaining({ variant: 'cpu', current: false, libtorch: '2.13.0+cpu (cpu)' })]);
  expect(r.attempts.map((a) => a.kind)).toEqual(['local', 'prebuilt']);
});

describe('locating libtorch at run time (no fetch)', () => {
  test('precedence: explicit env > the install record > the cache; each miss is explained', () => {
    const root = fakePackage();
    const env = bareEnv();
    const miss = locateLibtorchFor('2.13.0', 'cpu', { root, env });
    expect(miss.libtorch).toBeNull();
    expect(miss.tried.join('\n')).toMatch(/PEFT_NODE_LIBTORCH \/ LIBTORCH: not set/);
    expect(miss.tried.join('\n')).toMatch(/install record .*: none/);
    expect(miss.tried.join('\n')).toMatch(/cache .*2\.13\.0-cpu: not present/);

    // A half-fetched cache (no completion marker) is not used.
    const cacheDir = fakeLibtorch(path.join(tmp, 'cache', 'libtorch', '2.13.0-cpu'));
    expect(locateLibtorchFor('2.13.0', 'cpu', { root, env }).tried.join('\n')).toMatch(/incomplete \(no \.peft-node-complete\), a fetch was interrupted/);
    fs.writeFileSync(path.join(cacheDir, lt.MARKER), JSON.stringify({ version: '2.13.0', variant: 'cpu' }));
    expect(locateLibtorchFor('2.13.0', 'cpu', { root, env }).libtorch).toMatchObject({ source: 'cache', root: cacheDir });

    // The libtorch the install used beats the cache; a record pointing at another version is skipped.
    const recorded = fakeLibtorch(path.join(tmp, 'recorded'));
    fs.mkdirSync(path.join(root, 'build'));
    const rec = (r: string) => fs.writeFileSync(path.join(root, 'build', 'peft-node-install.json'), JSON.stringify({ addon: 'prebuilt', libtorch: { root: r } }));
    rec(recorded);
    expect(locateLibtorchFor('2.13.0', 'cpu', { root, env }).libtorch).toMatchObject({ source: 'install-record', root: recorded });
    rec(fakeLibtorch(path.join(tmp, 'recorded212'), '2.12.0+cpu'));
    const r212 = locateLibtorchFor('2.13.0', 'cpu', { root, env });
    expect(r212.libtorch).toMatchObject({ source: 'cache' });
    expect(r212.tried.join('\n')).toMatch(/recorded212: libtorch 2\.12\.0\+cpu \(cpu\)/);

    // An explicit dir always wins (even of another version: the caller reports the mismatch).
    const explicit = fakeLibtorch(path.join(tmp, 'explicit'), '2.12.0+cpu');
    expect(locateLibtorchFor('2.13.0', 'cpu', { root, env: { ...env, PEFT_NODE_LIBTORCH: explicit } }).libtorch).toMatchObject({ source: 'env', version: '2.12.0' });
    expect(() => locateLibtorchFor('2.13.0', 'cpu', { root, env: { ...env, LIBTORCH: path.join(tmp, 'nothing') } })).toThrow(
      expect.objectContaining({ code: 'ERR_LIBTORCH_INVALID' }),
    );
  });
});

describe('first use explains what is missing', () => {
  test('no local build and no libtorch for the prebuilt: ERR_LIBTORCH_NOT_FOUND with the fetch command', () => {
    const root = fakePackage({ prebuilt: { version: '2.14.1', variant: 'cu130' } });
    const env = bareEnv({ PEFT_NODE_VARIANT: 'cu130' });
    let err: PeftNodeError | undefined;
    try {
      loadAddon({ root, env, verdictDir: null });
    } catch (e) {
      err = e as PeftNodeError;
    }
    expect(err).toBeInstanceOf(PeftNodeError);
    expect(err!.code).toBe('ERR_LIBTORCH_NOT_FOUND');
    expect(err!.message).toMatch(/libtorch 2\.14\.1 \(cu130\) was not found, and there is no local build/);
    expect(err!.message).toMatch(/1\. local build .*not built/);
    expect(err!.message).toMatch(/2\. prebuilt .*peft-node\.napi\.glibc\.node: needs libtorch 2\.14\.1 \(cu130\), not found: .*cache/);
    expect(err!.message).toMatch(/npx peft-node libtorch install --variant cu130 --torch-version 2\.14\.1/);
    expect(err!.message).toMatch(/scripts\/libtorch\.js install --variant cu130 --version 2\.14\.1/);
    expect(err!.message).toMatch(/npm rebuild peft-node/);
  });

  test('a binary that does not load: ERR_ADDON_LOAD with each candidate and why', () => {
    const root = fakePackage({ prebuilt: {} });
    fs.mkdirSync(path.join(root, 'build', 'Release'), { recursive: true });
    fs.writeFileSync(path.join(root, 'build', 'Release', 'peft_node.node'), 'garbage');
    const cacheLt = fakeLibtorch(path.join(tmp, 'cache', 'libtorch', '2.13.0-cpu'));
    fs.writeFileSync(path.join(cacheLt, lt.MARKER), JSON.stringify({ version: '2.13.0', variant: 'cpu' }));
    const res = resolveAddon({ root, env: bareEnv(), verdictDir: null });
    expect(res.chosen).toBeNull();
    expect(res.attempts.map((a) => a.kind)).toEqual(['local', 'prebuilt']);
    expect(res.attempts[0].reason).toMatch(/no build stamp; test load failed: .*(invalid ELF header|file too short)/);
    expect(res.attempts[1].reason).toMatch(/libtorch 2\.13\.0 \(cpu\) from cache: .*; test load failed/);
    expect(() => loadAddon({ root, env: bareEnv(), verdictDir: null })).toThrow(expect.objectContaining({ code: 'ERR_ADDON_LOAD' }));
    // The install record decides the order: a prebuilt install tries the prebuilt first.
    fs.writeFileSync(path.join(root, 'build', 'peft-node-install.json'), JSON.stringify({ addon: 'prebuilt', variant: 'cpu' }));
    expect(resolveAddon({ root, env: bareEnv(), verdictDir: null }).attempts.map((a) => a.kind)).toEqual(['prebuilt', 'local']);
  });

  test('a local build for another variant than PEFT_NODE_VARIANT is skipped, with the reason', () => {
    const root = fakePackage();
    fs.mkdirSync(path.join(root, 'build', 'Release'), { recursive: true });
    fs.writeFileSync(path.join(root, 'build', 'Release', 'peft_node.node'), 'garbage');
    fs.writeFileSync(path.join(root, 'build', 'peft-node-build.json'), JSON.stringify({ libtorch: { root: '/x', version: '2.13.0', variant: 'cpu' } }));
    const res = resolveAddon({ root, env: bareEnv({ PEFT_NODE_VARIANT: 'cu130' }), verdictDir: null });
    expect(res.attempts[0].reason).toBe('built for cpu, PEFT_NODE_VARIANT wants cu130');
  });
});

(haveLocalBuild ? describe : describe.skip)('test loads and the libtorch preload (real binaries)', () => {
  const info = JSON.parse(fs.readFileSync(path.join(ROOT, 'build', 'peft-node-build.json'), 'utf8'));
  const libtorchRoot: string = info.libtorch.root;

  test('a passing verdict is cached per binary and invalidated when the binary changes; failures are not cached', () => {
    const file = path.join(tmp, 'copy.node');
    fs.copyFileSync(LOCAL_BUILD, file);
    const verdictDir = path.join(tmp, 'verdicts');
    const c: Candidate = { kind: 'local', file, preload: null, expectVersion: info.libtorch.version, variant: 'cpu' };
    const first = testLoad(c, { verdictDir });
    expect(first).toMatchObject({ ok: true });
    expect(first.cached).toBeUndefined();
    expect(first.info).toMatchObject({ torchVersion: info.libtorch.version });
    expect(fs.readdirSync(verdictDir)).toHaveLength(1);
    const t0 = Date.now();
    expect(testLoad(c, { verdictDir })).toMatchObject({ ok: true, cached: true });
    expect(Date.now() - t0).toBeLessThan(100);
    const later = new Date(Date.now() + 5000);
    fs.utimesSync(file, later, later);
    expect(testLoad(c, { verdictDir }).cached).toBeUndefined();

    // Built for another libtorch than expected: refused (and not cached).
    const wrong = testLoad({ ...c, expectVersion: '2.99.0' }, { verdictDir: path.join(tmp, 'v2') });
    expect(wrong.ok).toBe(false);
    expect(wrong.reason).toMatch(/built for 2\.99\.0/);
    expect(fs.existsSync(path.join(tmp, 'v2'))).toBe(false);
  });

  (haveCmake ? test : test.skip)('without RUNPATH the addon does not load alone, and loads after the libtorch preload', () => {
    const file = path.join(tmp, 'norpath.node');
    fs.copyFileSync(LOCAL_BUILD, file);
    const script = path.join(tmp, 'rpath.cmake');
    fs.writeFileSync(script, `file(RPATH_REMOVE FILE "${file}")\n`);
    expect(spawnSync('cmake', ['-P', script]).status).toBe(0);
    expect(fs.readFileSync(file).includes(Buffer.from(`${libtorchRoot}/lib`))).toBe(false);

    const env = { ...process.env };
    delete env.LD_LIBRARY_PATH;
    const alone = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(file)})`], { encoding: 'utf8', env });
    expect(alone.status).not.toBe(0);
    expect(alone.stderr).toMatch(/lib(torch|torch_cpu|c10)\.so: cannot open shared object file/);

    const lib = runtimeLt(libtorchRoot, info.libtorch.version);
    const t = testLoad({ kind: 'prebuilt', file, preload: lib, expectVersion: info.libtorch.version, variant: 'cpu' }, { verdictDir: null, env });
    expect(t).toMatchObject({ ok: true, info: { torchVersion: info.libtorch.version } });
  });
});

describe('scripts/install.js: an install never strands the user', () => {
  function packageCopy(): string {
    const root = path.join(tmp, 'installed');
    fs.mkdirSync(path.join(root, 'scripts'), { recursive: true });
    for (const f of ['install.js', 'libtorch.js']) fs.copyFileSync(path.join(ROOT, 'scripts', f), path.join(root, 'scripts', f));
    fs.cpSync(path.join(ROOT, 'scripts', 'libtorch'), path.join(root, 'scripts', 'libtorch'), { recursive: true });
    fs.cpSync(path.join(ROOT, 'dist'), path.join(root, 'dist'), { recursive: true });
    fs.cpSync(path.join(ROOT, 'native'), path.join(root, 'native'), { recursive: true });
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(root, 'package.json'));
    return root;
  }
  const runInstall = (root: string, env: NodeJS.ProcessEnv, args: string[] = []) =>
    spawnSync(process.execPath, [path.join(root, 'scripts', 'install.js'), ...args], { encoding: 'utf8', env, timeout: 60_000 });

  test('no libtorch anywhere: exit 0, the package imports, first use says how to fix; strict mode fails', () => {
    const root = packageCopy();
    const r = runInstall(root, bareEnv());
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/cannot find libtorch 2\.13\.0 \(cpu\)/);
    expect(r.stderr).toMatch(/npx peft-node libtorch install/);
    expect(r.stderr).toMatch(/installed WITHOUT its native addon/);
    expect(runInstall(root, bareEnv({ PEFT_NODE_INSTALL_STRICT: '1' })).status).toBe(1);
    expect(runInstall(root, bareEnv(), ['--force']).status).toBe(1);

    // Importing works; the first native call raises the named error.
    const probe = `const l = require(${JSON.stringify(path.join(root, 'dist', 'runtime', 'loader.js'))});
      try { l.loadAddon(); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
    const p = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8', env: bareEnv() });
    const out = JSON.parse(p.stdout.trim());
    expect(out.code).toBe('ERR_ADDON_LOAD');
    expect(out.message).toMatch(/local build .*not built/);
    expect(out.message).toMatch(/no prebuilt for/);
    expect(out.message).toMatch(/npm rebuild peft-node/);
  });

  test('a stale prebuilt is not used; without cmake-js the build step gives up softly', () => {
    const root = packageCopy();
    const dir = path.join(root, 'prebuilds', `${PLAT}-cpu`);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'peft-node.napi.glibc.node'), 'x');
    fs.writeFileSync(path.join(dir, 'build-info.json'), JSON.stringify({ file: 'peft-node.napi.glibc.node', variant: 'cpu', libtorch: { version: '2.13.0', variant: 'cpu' }, sourceHash: '0'.repeat(64) }));
    const cacheLt = fakeLibtorch(path.join(tmp, 'cache', 'libtorch', '2.13.0-cpu'));
    fs.writeFileSync(path.join(cacheLt, lt.MARKER), JSON.stringify({ version: '2.13.0', variant: 'cpu' }));
    const r = runInstall(root, bareEnv());
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/libtorch 2\.13\.0\+cpu \(cpu\) from cache/);
    expect(r.stderr).toMatch(/prebuilt not used: built from other native sources/);
    expect(r.stderr).toMatch(/cmake-js is not installed/);
    expect(r.stderr).toMatch(/installed WITHOUT its native addon/);
  });

  test('PEFT_NODE_SKIP_INSTALL=1 does nothing', () => {
    const root = packageCopy();
    const r = runInstall(root, bareEnv({ PEFT_NODE_SKIP_INSTALL: '1' }));
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/PEFT_NODE_SKIP_INSTALL=1/);
    expect(fs.existsSync(path.join(root, 'build'))).toBe(false);
  });
});

describe('scripts/prebuild.js', () => {
  test('reads the newest GLIBC / GLIBCXX symbol versions a binary needs', () => {
    const buf = Buffer.from('\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.4\0GLIBCXX_3.4.9\0GLIBCXX_3.4.30\0GLIBCXX_3.4.29\0CXXABI_1.3\0', 'latin1');
    expect(prebuild.symbolVersionsRequired(buf)).toEqual({ glibc: '2.34', glibcxx: '3.4.30' });
  });

  test('--check fails for a missing or stale prebuilt', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'prebuild.js'), '--check', '--variant', 'cu999'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no prebuilt in prebuilds\/.*-cu999/);
  });
});
