// Unit tests of scripts/libtorch.js: injected env, fake exec (python, pip, unzip), real temp dirs for the cache and
// the lock. Nothing here touches the network, the real cache (~/.cache/peft-node) or a real Python.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { spawn, spawnSync } from 'child_process';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const lt = require('../scripts/libtorch.js');

const SCRIPT = path.resolve(__dirname, '..', 'scripts', 'libtorch.js');
const KEY = '2.13.0-cpu';

interface FakeTorch {
  version?: string; // e.g. "2.13.0+cpu"
  layout?: 'pip' | 'zip' | 'headers';
  cuda?: boolean;
}

/** A directory that looks like libtorch to the locator (empty .so files, real file layout). */
function makeFakeLibtorch(dir: string, { version = '2.13.0+cpu', layout = 'pip', cuda = false }: FakeTorch = {}): string {
  const [base] = version.split('+');
  const [maj, min, pat] = base.split('.');
  fs.mkdirSync(path.join(dir, 'lib'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'share', 'cmake', 'Torch'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'share', 'cmake', 'Caffe2'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'include', 'torch', 'headeronly'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'lib', 'libtorch.so'), '');
  if (cuda) fs.writeFileSync(path.join(dir, 'lib', 'libtorch_cuda.so'), '');
  fs.writeFileSync(path.join(dir, 'share', 'cmake', 'Torch', 'TorchConfig.cmake'), '# fake\n');
  fs.writeFileSync(
    path.join(dir, 'share', 'cmake', 'Caffe2', 'Caffe2Targets.cmake'),
    'set_target_properties(torch_cpu PROPERTIES\n  INTERFACE_COMPILE_DEFINITIONS "USE_DISTRIBUTED;USE_RPC"\n)\n',
  );
  fs.writeFileSync(
    path.join(dir, 'include', 'torch', 'headeronly', 'version.h'),
    `#define TORCH_VERSION_MAJOR ${maj}\n#define TORCH_VERSION_MINOR ${min}\n#define TORCH_VERSION_PATCH ${pat}\n`,
  );
  if (layout === 'pip') fs.writeFileSync(path.join(dir, 'version.py'), `__version__ = '${version}'\ncuda: Optional[str] = None\n`);
  if (layout === 'zip') fs.writeFileSync(path.join(dir, 'build-version'), `${version}\n`);
  return dir;
}

function writeMarker(dir: string, extra: Record<string, unknown> = {}): void {
  fs.writeFileSync(path.join(dir, lt.MARKER), JSON.stringify({ version: '2.13.0', variant: 'cpu', source: 'test', ...extra }));
}

interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
  error?: NodeJS.ErrnoException | null;
}
type Call = { cmd: string; args: string[] };

interface FakeExecOptions {
  python?: { found: false } | { dir: string; version: string; cuda?: string | null } | 'missing';
  pip?: 'ok' | 'fail' | 'missing';
  pipDelayMs?: number;
  wheelVersion?: string; // what the fake pip "downloads"
}

/** Fake exec runner standing in for python3 (probe), pip and unzip. */
function fakeExec(o: FakeExecOptions = {}) {
  const calls: Call[] = [];
  const enoent = (): ExecResult => ({ code: null, stdout: '', stderr: '', error: Object.assign(new Error('spawn ENOENT'), { code: 'ENOENT' }) });
  const exec = async (cmd: string, args: string[]): Promise<ExecResult> => {
    calls.push({ cmd, args });
    const isPython = cmd === 'python3' || cmd === 'python';
    if (isPython && args[0] === '-c' && args[1].includes('find_spec')) {
      const py = o.python ?? 'missing';
      if (py === 'missing') return enoent();
      if ('found' in py) return { code: 0, stdout: '{"found": false}\n', stderr: '' };
      return { code: 0, stdout: `${JSON.stringify({ found: true, cmake_prefix_path: path.join(py.dir, 'share', 'cmake'), cuda: null, ...py })}\n`, stderr: '' };
    }
    const pipArgs = isPython && args[0] === '-m' && args[1] === 'pip' ? args.slice(2) : cmd === 'pip' || cmd === 'pip3' ? args : null;
    if (pipArgs) {
      if ((o.pip ?? 'fail') === 'missing') return isPython ? { code: 1, stdout: '', stderr: 'No module named pip' } : enoent();
      if (pipArgs[0] === '--version') return { code: 0, stdout: 'pip 23.2.1\n', stderr: '' };
      if (pipArgs[0] === 'download') {
        if (o.pipDelayMs) await new Promise((r) => setTimeout(r, o.pipDelayMs));
        if (o.pip !== 'ok') return { code: 1, stdout: '', stderr: 'ERROR: No matching distribution found for torch' };
        const dest = pipArgs[pipArgs.indexOf('-d') + 1];
        fs.writeFileSync(path.join(dest, `torch-${o.wheelVersion ?? '2.13.0+cpu'}-cp311-cp311-manylinux_2_28_x86_64.whl`), 'fake wheel');
        return { code: 0, stdout: 'Successfully downloaded torch\n', stderr: '' };
      }
    }
    if (cmd === 'unzip') {
      const archive = args[2];
      const dest = args[args.indexOf('-d') + 1];
      const wheel = /torch-(.+?)-cp/.exec(path.basename(archive));
      if (wheel) makeFakeLibtorch(path.join(dest, 'torch'), { version: wheel[1], layout: 'pip' });
      else makeFakeLibtorch(path.join(dest, 'libtorch'), { version: '2.13.0+cpu', layout: 'zip' });
      return { code: 0, stdout: '', stderr: '' };
    }
    return enoent();
  };
  const count = (pred: (c: Call) => boolean) => calls.filter(pred).length;
  return {
    exec,
    calls,
    pipDownloads: () => count((c) => c.args.includes('download')),
    probes: () => count((c) => c.args[0] === '-c' && c.args[1].includes('find_spec')),
  };
}

// A download that refuses the network: every test must stay offline.
async function offlineDownload(url: string, dest: string): Promise<void> {
  if (/^https?:/.test(url)) throw new Error(`test tried the network: ${url}`);
  return lt.downloadUrl(url, dest);
}

let tmp: string;
let logs: string[];
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peft-node-locator-'));
  logs = [];
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

function opts(extra: Record<string, unknown> = {}) {
  return {
    env: {},
    cacheRoot: path.join(tmp, 'cache'),
    log: (m: string) => logs.push(m),
    download: offlineDownload,
    lockPollMs: 20,
    ...extra,
  };
}

function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

describe('precedence: env > python > cache > fetch', () => {
  function setupAll() {
    const envDir = makeFakeLibtorch(path.join(tmp, 'env-libtorch'));
    const pyDir = makeFakeLibtorch(path.join(tmp, 'site-packages', 'torch'));
    const cacheDir = makeFakeLibtorch(path.join(tmp, 'cache', KEY));
    writeMarker(cacheDir);
    return { envDir, pyDir, cacheDir };
  }

  test('PEFT_NODE_LIBTORCH wins and nothing is executed', async () => {
    const { envDir } = setupAll();
    const f = fakeExec({ python: { dir: path.join(tmp, 'site-packages', 'torch'), version: '2.13.0+cpu' }, pip: 'ok' });
    const r = await lt.locateLibtorch(opts({ env: { PEFT_NODE_LIBTORCH: envDir }, exec: f.exec }));
    expect(r.source).toBe('env');
    expect(r.root).toBe(envDir);
    expect(r.version).toBe('2.13.0');
    expect(r.variant).toBe('cpu');
    expect(r.torchDir).toBe(path.join(envDir, 'share', 'cmake', 'Torch'));
    expect(r.libDir).toBe(path.join(envDir, 'lib'));
    expect(r.includeDirs).toEqual([path.join(envDir, 'include'), path.join(envDir, 'include', 'torch', 'csrc', 'api', 'include')]);
    expect(r.compileDefinitions).toEqual(['USE_DISTRIBUTED', 'USE_RPC']);
    expect(f.calls).toHaveLength(0);
  });

  test('LIBTORCH also works, and a site-packages dir holding torch/ is accepted', async () => {
    const { pyDir } = setupAll();
    const r = await lt.locateLibtorch(opts({ env: { LIBTORCH: path.dirname(pyDir) }, exec: fakeExec().exec }));
    expect(r.source).toBe('env');
    expect(r.root).toBe(pyDir);
  });

  test('Python torch of the pinned version beats the cache', async () => {
    const { pyDir } = setupAll();
    const f = fakeExec({ python: { dir: pyDir, version: '2.13.0+cpu' }, pip: 'ok' });
    const r = await lt.locateLibtorch(opts({ exec: f.exec }));
    expect(r.source).toBe('python');
    expect(r.root).toBe(pyDir);
    expect(f.pipDownloads()).toBe(0);
  });

  test('the cache beats a fetch', async () => {
    const { cacheDir } = setupAll();
    const f = fakeExec({ python: { found: false }, pip: 'ok' });
    const r = await lt.locateLibtorch(opts({ exec: f.exec }));
    expect(r.source).toBe('cache');
    expect(r.root).toBe(cacheDir);
    expect(f.pipDownloads()).toBe(0);
  });

  test('fetch via pip when nothing else exists; writes the marker and cleans temp dirs', async () => {
    const f = fakeExec({ python: 'missing', pip: 'ok' });
    const r = await lt.locateLibtorch(opts({ exec: f.exec }));
    expect(r.source).toBe('fetched');
    expect(r.root).toBe(path.join(tmp, 'cache', KEY));
    expect(f.pipDownloads()).toBe(1);
    const marker = JSON.parse(fs.readFileSync(path.join(r.root, lt.MARKER), 'utf8'));
    expect(marker).toMatchObject({ version: '2.13.0', variant: 'cpu', source: 'pip' });
    expect(fs.readdirSync(path.join(tmp, 'cache')).sort()).toEqual([KEY]); // no .tmp-*, no .lock left
    // The first pip attempt is offline (configured find-links), with the exact pinned spec.
    const dl = f.calls.find((c) => c.args.includes('download'))!;
    expect(dl.args).toEqual(expect.arrayContaining(['torch==2.13.0+cpu', '--no-deps', '--no-index']));
    // Second call: straight from the cache.
    const again = await lt.locateLibtorch(opts({ exec: f.exec }));
    expect(again.source).toBe('cache');
    expect(f.pipDownloads()).toBe(1);
  });

  test('falls back to the libtorch zip when pip fails', async () => {
    const zipFile = path.join(tmp, 'libtorch.zip');
    fs.writeFileSync(zipFile, 'fake zip, the fake unzip ignores it');
    const f = fakeExec({ python: 'missing', pip: 'fail' });
    const r = await lt.locateLibtorch(opts({ exec: f.exec, env: { PEFT_NODE_LIBTORCH_URL: `file://${zipFile}` } }));
    expect(r.source).toBe('fetched');
    const marker = JSON.parse(fs.readFileSync(path.join(r.root, lt.MARKER), 'utf8'));
    expect(marker).toMatchObject({ source: 'zip', from: `file://${zipFile}`, fullVersion: '2.13.0+cpu' });
  });
});

describe('versions', () => {
  test('a Python torch of another version or variant is rejected', async () => {
    const other = makeFakeLibtorch(path.join(tmp, 'py', 'torch'), { version: '2.12.0+cpu' });
    const f = fakeExec({ python: { dir: other, version: '2.12.0+cpu' } });
    const err = await lt.locateLibtorch(opts({ exec: f.exec, allowFetch: false })).catch((e: Error) => e);
    expect(err.code).toBe('ERR_LIBTORCH_NOT_FOUND');
    expect(err.message).toMatch(/torch 2\.12\.0\+cpu .* is not the pinned 2\.13\.0/);

    const cuda = makeFakeLibtorch(path.join(tmp, 'py2', 'torch'), { version: '2.13.0+cu126', cuda: true });
    const g = fakeExec({ python: { dir: cuda, version: '2.13.0+cu126', cuda: '12.6' } });
    const err2 = await lt.locateLibtorch(opts({ exec: g.exec, allowFetch: false })).catch((e: Error) => e);
    expect(err2.message).toMatch(/variant cu126, not cpu/);
  });

  test('a pinned-version Python torch is accepted for a matching CUDA variant', async () => {
    const cuda = makeFakeLibtorch(path.join(tmp, 'py', 'torch'), { version: '2.13.0', cuda: true });
    const f = fakeExec({ python: { dir: cuda, version: '2.13.0', cuda: '12.8' } });
    const r = await lt.locateLibtorch(opts({ exec: f.exec, variant: 'cu128', allowFetch: false }));
    expect(r).toMatchObject({ source: 'python', variant: 'cu128', cuda: true });
  });

  test('explicit env dir: 2.11-2.14 warns, outside is an error unless PEFT_NODE_ALLOW_VERSION_MISMATCH=1', async () => {
    const near = makeFakeLibtorch(path.join(tmp, 'lt212'), { version: '2.12.0', layout: 'headers' });
    const r = await lt.locateLibtorch(opts({ env: { PEFT_NODE_LIBTORCH: near } }));
    expect(r).toMatchObject({ source: 'env', version: '2.12.0' });
    expect(logs.join('\n')).toMatch(/not the pinned 2\.13\.0/);

    const far = makeFakeLibtorch(path.join(tmp, 'lt210'), { version: '2.10.0+cpu', layout: 'zip' });
    const err = await lt.locateLibtorch(opts({ env: { PEFT_NODE_LIBTORCH: far } })).catch((e: Error) => e);
    expect(err.code).toBe('ERR_LIBTORCH_INVALID');
    expect(err.message).toMatch(/holds libtorch 2\.10\.0\+cpu, but peft-node needs 2\.13\.0/);

    const forced = await lt.locateLibtorch(opts({ env: { PEFT_NODE_LIBTORCH: far, PEFT_NODE_ALLOW_VERSION_MISMATCH: '1' } }));
    expect(forced.version).toBe('2.10.0');
  });

  test('an env var pointing at something else is an error, not silently skipped', async () => {
    fs.mkdirSync(path.join(tmp, 'empty'));
    const err = await lt.locateLibtorch(opts({ env: { PEFT_NODE_LIBTORCH: path.join(tmp, 'empty') } })).catch((e: Error) => e);
    expect(err.code).toBe('ERR_LIBTORCH_INVALID');
    expect(err.message).toMatch(/is not a libtorch dir/);
  });

  test('inspectLibtorch reads header versions and detects CUDA builds', () => {
    const dir = makeFakeLibtorch(path.join(tmp, 'h'), { version: '2.14.1', layout: 'headers', cuda: true });
    expect(lt.inspectLibtorch(dir)).toMatchObject({ ok: true, version: '2.14.1', variant: 'cuda', cuda: true });
    fs.rmSync(path.join(dir, 'lib', 'libtorch.so'));
    expect(lt.inspectLibtorch(dir)).toMatchObject({ ok: false, problem: expect.stringMatching(/missing lib\/libtorch\.so/) });
  });
});

describe('cache robustness', () => {
  test('a cache dir without the completion marker is discarded and refetched', async () => {
    const half = makeFakeLibtorch(path.join(tmp, 'cache', KEY));
    fs.writeFileSync(path.join(half, 'half-written-junk'), 'x');
    const leftover = path.join(tmp, 'cache', `.tmp-${KEY}-dead01`);
    fs.mkdirSync(leftover);
    const f = fakeExec({ python: 'missing', pip: 'ok' });
    const r = await lt.locateLibtorch(opts({ exec: f.exec }));
    expect(r.source).toBe('fetched');
    expect(f.pipDownloads()).toBe(1);
    expect(fs.existsSync(path.join(r.root, 'half-written-junk'))).toBe(false);
    expect(fs.existsSync(path.join(r.root, lt.MARKER))).toBe(true);
    expect(fs.existsSync(leftover)).toBe(false);
    expect(logs.join('\n')).toMatch(/removing incomplete cache/);
  });

  test('without fetch, a half-written cache is reported, not used', async () => {
    makeFakeLibtorch(path.join(tmp, 'cache', KEY));
    const err = await lt.locateLibtorch(opts({ exec: fakeExec().exec, allowFetch: false })).catch((e: Error) => e);
    expect(err.code).toBe('ERR_LIBTORCH_NOT_FOUND');
    expect(err.message).toMatch(/incomplete \(no \.peft-node-complete\)/);
    expect(err.message).toMatch(/fetch: disabled/);
  });

  test('a failed fetch leaves no temp dir and no lock behind', async () => {
    const f = fakeExec({ python: 'missing', pip: 'fail' });
    await expect(lt.locateLibtorch(opts({ exec: f.exec, env: { PEFT_NODE_LIBTORCH_URL: path.join(tmp, 'nope.zip') } }))).rejects.toThrow();
    expect(fs.readdirSync(path.join(tmp, 'cache'))).toEqual([]);
  });

  test('a lock left by a dead process is broken', async () => {
    fs.mkdirSync(path.join(tmp, 'cache'), { recursive: true });
    const lockPath = path.join(tmp, 'cache', `${KEY}.lock`);
    fs.writeFileSync(lockPath, JSON.stringify({ pid: deadPid(), hostname: os.hostname(), nonce: 'x' }));
    const f = fakeExec({ python: 'missing', pip: 'ok' });
    const r = await lt.locateLibtorch(opts({ exec: f.exec }));
    expect(r.source).toBe('fetched');
    expect(logs.join('\n')).toMatch(/breaking stale lock .*is not running/);
    expect(fs.existsSync(lockPath)).toBe(false);
  });

  test('a lock from another host without heartbeat is broken', async () => {
    fs.mkdirSync(path.join(tmp, 'cache'), { recursive: true });
    const lockPath = path.join(tmp, 'cache', `${KEY}.lock`);
    fs.writeFileSync(lockPath, JSON.stringify({ pid: 1, hostname: 'some-other-host', nonce: 'x' }));
    const old = new Date(Date.now() - 10 * 60_000);
    fs.utimesSync(lockPath, old, old);
    const f = fakeExec({ python: 'missing', pip: 'ok' });
    const r = await lt.locateLibtorch(opts({ exec: f.exec }));
    expect(r.source).toBe('fetched');
    expect(logs.join('\n')).toMatch(/no heartbeat/);
  });

  test('a live lock is waited on, with a bounded timeout', async () => {
    fs.mkdirSync(path.join(tmp, 'cache'), { recursive: true });
    const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)']);
    try {
      fs.writeFileSync(path.join(tmp, 'cache', `${KEY}.lock`), JSON.stringify({ pid: holder.pid, hostname: os.hostname(), nonce: 'x' }));
      const f = fakeExec({ python: 'missing', pip: 'ok' });
      const err = await lt.locateLibtorch(opts({ exec: f.exec, lockTimeoutMs: 300 })).catch((e: Error) => e);
      expect(err.code).toBe('ERR_LIBTORCH_NOT_FOUND');
      expect(err.message).toMatch(/timed out after .* waiting for .*held by pid \d+/);
      expect(f.pipDownloads()).toBe(0);
      expect(logs.join('\n')).toMatch(/waiting for pid/);
    } finally {
      holder.kill();
    }
  });
});

describe('concurrency', () => {
  test('two concurrent locates with a slow fetch: one fetch, one valid cache', async () => {
    const f = fakeExec({ python: 'missing', pip: 'ok', pipDelayMs: 400 });
    const [a, b] = await Promise.all([lt.locateLibtorch(opts({ exec: f.exec })), lt.locateLibtorch(opts({ exec: f.exec }))]);
    expect(f.pipDownloads()).toBe(1);
    expect(a.root).toBe(b.root);
    expect([a.source, b.source].sort()).toEqual(['cache', 'fetched']);
    expect(lt.inspectLibtorch(a.root)).toMatchObject({ ok: true, version: '2.13.0' });
    expect(fs.readdirSync(path.join(tmp, 'cache'))).toEqual([KEY]);
  });

  test('two CLI processes installing at once (real zip, Node extractor): one fetch', async () => {
    // No python, pip or unzip on PATH: forces the zip way and the built-in zip reader.
    const zipFile = path.join(tmp, 'libtorch-fake.zip');
    fs.writeFileSync(zipFile, makeZip(fakeLibtorchZipEntries()));
    const env = {
      PATH: path.join(tmp, 'no-bin'),
      HOME: tmp,
      PEFT_NODE_CACHE: path.join(tmp, 'base'),
      PEFT_NODE_PYTHON: path.join(tmp, 'no-python'),
      PEFT_NODE_LIBTORCH_URL: `file://${zipFile}`,
    };
    const runCli = () =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const p = spawn(process.execPath, [SCRIPT, 'install', '--json'], { env });
        let stdout = '';
        let stderr = '';
        p.stdout.on('data', (d) => (stdout += d));
        p.stderr.on('data', (d) => (stderr += d));
        p.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    const [a, b] = await Promise.all([runCli(), runCli()]);
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    const ra = JSON.parse(a.stdout);
    const rb = JSON.parse(b.stdout);
    expect(ra.root).toBe(path.join(tmp, 'base', 'libtorch', KEY));
    expect(rb.root).toBe(ra.root);
    expect([ra.source, rb.source].sort()).toEqual(['cache', 'fetched']);
    expect((a.stderr + b.stderr).match(/fetched into/g)).toHaveLength(1);
    expect(fs.readFileSync(path.join(ra.root, 'lib', 'libtorch.so'), 'utf8')).toBe('ELF-ish');
    expect(fs.statSync(path.join(ra.root, 'lib', 'libtorch.so')).mode & 0o777).toBe(0o755);
    expect(JSON.parse(fs.readFileSync(path.join(ra.root, lt.MARKER), 'utf8'))).toMatchObject({ source: 'zip', fullVersion: '2.13.0+cpu' });
    expect(fs.readdirSync(path.join(tmp, 'base', 'libtorch'))).toEqual([KEY]);
  }, 30_000);
});

describe('errors', () => {
  test('when every way fails: ERR_LIBTORCH_NOT_FOUND listing each way and how to fix it', async () => {
    const f = fakeExec({ python: 'missing', pip: 'missing' });
    const err = await lt
      .locateLibtorch(opts({ exec: f.exec, env: { PEFT_NODE_LIBTORCH_URL: path.join(tmp, 'missing.zip') } }))
      .catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('ERR_LIBTORCH_NOT_FOUND');
    const m: string = err.message;
    expect(m).toMatch(/1\. PEFT_NODE_LIBTORCH \/ LIBTORCH: not set/);
    expect(m).toMatch(/2\. Python torch 2\.13\.0: python3: not found; python: not found/);
    expect(m).toMatch(/3\. cache .*2\.13\.0-cpu: not present/);
    expect(m).toMatch(/fetch \(pip wheel torch==2\.13\.0\+cpu\): no pip/);
    expect(m).toMatch(/fetch \(libtorch zip .*missing\.zip\): .*ENOENT/);
    expect(m).toMatch(/set PEFT_NODE_LIBTORCH/);
    expect(m).toMatch(/scripts\/libtorch\.js install/);
    expect(err.tried).toHaveLength(5);
  });

  test('the CLI exits 1 with the message on stderr and nothing on stdout', () => {
    const r = spawnSync(process.execPath, [SCRIPT, 'locate', '--no-fetch', '--print', 'root'], {
      encoding: 'utf8',
      env: { PATH: path.join(tmp, 'no-bin'), HOME: tmp, PEFT_NODE_PYTHON: path.join(tmp, 'no-python') },
    });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^peft-node: cannot find libtorch 2\.13\.0 \(cpu\)/);
  });

  test('the CLI prints single paths for binding.gyp', () => {
    const dir = makeFakeLibtorch(path.join(tmp, 'lt'));
    const env = { PATH: path.join(tmp, 'no-bin'), PEFT_NODE_LIBTORCH: dir };
    const print = (what: string) => spawnSync(process.execPath, [SCRIPT, 'locate', '--print', what], { encoding: 'utf8', env }).stdout;
    expect(print('lib')).toBe(`${path.join(dir, 'lib')}\n`);
    expect(print('torch-dir')).toBe(`${path.join(dir, 'share', 'cmake', 'Torch')}\n`);
    expect(print('include')).toBe(`${path.join(dir, 'include')} ${path.join(dir, 'include', 'torch', 'csrc', 'api', 'include')}\n`);
    expect(print('cuda')).toBe('0\n');
    expect(print('defines')).toBe('USE_DISTRIBUTED USE_RPC\n');
  });

  test('the Node zip reader refuses entries escaping the target dir', async () => {
    const zipFile = path.join(tmp, 'evil.zip');
    fs.writeFileSync(zipFile, makeZip([{ name: 'libtorch/../../evil.txt', data: 'x' }]));
    await expect(lt.extractZipNode(zipFile, path.join(tmp, 'out'), ['libtorch/'])).rejects.toThrow(/unsafe path/);
    expect(fs.existsSync(path.join(tmp, 'evil.txt'))).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// A tiny zip writer (deflate), so the built-in extractor is tested on a real archive.

function fakeLibtorchZipEntries(): { name: string; data: string; mode?: number }[] {
  return [
    { name: 'libtorch/lib/libtorch.so', data: 'ELF-ish', mode: 0o755 },
    { name: 'libtorch/share/cmake/Torch/TorchConfig.cmake', data: '# fake\n' },
    { name: 'libtorch/include/torch/headeronly/version.h', data: '#define TORCH_VERSION_MAJOR 2\n#define TORCH_VERSION_MINOR 13\n#define TORCH_VERSION_PATCH 0\n' },
    { name: 'libtorch/build-version', data: '2.13.0+cpu\n' },
    { name: 'libtorch/bin/not-extracted', data: 'x' },
  ];
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf: Buffer): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function makeZip(entries: { name: string; data: string; mode?: number }[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const data = Buffer.from(e.data);
    const comp = zlib.deflateRawSync(data);
    const name = Buffer.from(e.name);
    const crc = crc32(data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(8, 8);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(comp.length, 18);
    lh.writeUInt32LE(data.length, 22);
    lh.writeUInt16LE(name.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE((3 << 8) | 20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt16LE(8, 10);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(comp.length, 20);
    ch.writeUInt32LE(data.length, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(((0o100000 | (e.mode ?? 0o644)) << 16) >>> 0, 38);
    ch.writeUInt32LE(offset, 42);
    locals.push(lh, name, comp);
    centrals.push(ch, name);
    offset += 30 + name.length + comp.length;
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, eocd]);
}

describe('CUDA variants through pip (cu130: PyPI-style wheels have no local version tag)', () => {
  /** pip that only has `torch==<plain>` (a local wheel store / PyPI mirror) and unzip making a CUDA fake torch. */
  function cudaPip(wheelCuda: string) {
    const specs: string[] = [];
    const exec = async (cmd: string, args: string[]) => {
      const pipArgs = args[0] === '-m' && args[1] === 'pip' ? args.slice(2) : null;
      if (pipArgs && pipArgs[0] === '--version') return { code: 0, stdout: 'pip 24\n', stderr: '' };
      if (pipArgs && pipArgs[0] === 'download') {
        specs.push(pipArgs[1]);
        if (pipArgs[1] !== 'torch==2.14.1') return { code: 1, stdout: '', stderr: `ERROR: No matching distribution found for ${pipArgs[1]}` };
        const dest = pipArgs[pipArgs.indexOf('-d') + 1];
        fs.writeFileSync(path.join(dest, 'torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl'), 'fake wheel');
        return { code: 0, stdout: '', stderr: '' };
      }
      if (cmd === 'unzip') {
        const dest = args[args.indexOf('-d') + 1];
        const dir = makeFakeLibtorch(path.join(dest, 'torch'), { version: `2.14.1+${wheelCuda}`, cuda: true });
        fs.writeFileSync(path.join(dir, 'version.py'), `__version__ = '2.14.1+${wheelCuda}'\ncuda: Optional[str] = '13.0'\n`);
        return { code: 0, stdout: '', stderr: '' };
      }
      return { code: null, stdout: '', stderr: '', error: Object.assign(new Error('spawn ENOENT'), { code: 'ENOENT' }) };
    };
    return { exec, specs };
  }

  test('libtorch install --variant cu130 --version 2.14.1: the plain torch==2.14.1 wheel is used, its variant checked', async () => {
    const f = cudaPip('cu130');
    const r = await lt.locateLibtorch(opts({ exec: f.exec, variant: 'cu130', version: '2.14.1', pythons: ['python3'] }));
    expect(r).toMatchObject({ source: 'fetched', version: '2.14.1', variant: 'cu130', cuda: true });
    expect(r.root).toBe(path.join(tmp, 'cache', '2.14.1-cu130'));
    // The zip (network, refused here) first, then pip: exact spec offline, exact spec on the PyTorch index, plain spec.
    expect(f.specs).toEqual(['torch==2.14.1+cu130', 'torch==2.14.1+cu130', 'torch==2.14.1']);
    expect(logs.join('\n')).toMatch(/fetch failed \(libtorch zip .*cu130.*\): test tried the network/);
  });

  test('a plain wheel of another CUDA version is rejected, not cached', async () => {
    const f = cudaPip('cu128');
    const err = await lt.locateLibtorch(opts({ exec: f.exec, variant: 'cu130', version: '2.14.1', pythons: ['python3'] })).catch((e: Error) => e);
    expect(err.code).toBe('ERR_LIBTORCH_NOT_FOUND');
    expect(err.message).toMatch(/got variant cu128, expected cu130/);
    expect(fs.readdirSync(path.join(tmp, 'cache'))).toEqual([]);
  });

  test('the CPU variant never takes a plain (CUDA) wheel', async () => {
    const f = cudaPip('cu130');
    await lt.locateLibtorch(opts({ exec: f.exec, pythons: ['python3'], env: { PEFT_NODE_LIBTORCH_URL: path.join(tmp, 'none.zip') } })).catch(() => null);
    expect(f.specs).toEqual(['torch==2.13.0+cpu', 'torch==2.13.0+cpu']);
  });
});
