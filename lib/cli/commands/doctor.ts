/**
 * `peft-node doctor`: where libtorch is, what the addon was built against, whether it loads, what it runs on (CUDA,
 * threads), Node and N-API. Every probe is caught: a failing one is a line of the report, never a crash. Exit code 1
 * when the addon cannot be used (so scripts can check), else 0.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { addonReport } from '../../runtime/loader';
import { locateLibtorch } from '../../runtime/libtorch';
import { native } from '../../runtime/native';
import { Args, PACKAGE_ROOT, cache_dir, last_adapter_file, out, read_last_adapter } from '../common';

export const command = 'doctor';
export const describe = 'Check the installation: libtorch, the native addon, CUDA, threads, Node and N-API';

export function builder(y: Argv): Argv {
  return y
    .option('json', { type: 'boolean', describe: 'print JSON', default: false })
    .example('$0 doctor', 'a line per check')
    .example('$0 doctor --json', 'machine-readable, e.g. for bug reports');
}

type Status = 'ok' | 'warn' | 'fail' | 'info';
interface Check {
  name: string;
  status: Status;
  detail: string;
  data?: unknown;
}

function firstLine(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0];
}

function readJsonMaybe(file: string): Record<string, unknown> | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch {
    return null;
  }
}

export async function handler(args: Args): Promise<number> {
  const checks: Check[] = [];
  const add = (name: string, status: Status, detail: string, data?: unknown) => checks.push({ name, status, detail, data });

  const pkg = readJsonMaybe(path.join(PACKAGE_ROOT, 'package.json'));
  add('peft-node', 'info', `${pkg?.version ?? 'unknown version'} at ${PACKAGE_ROOT}`);
  add('node', 'info', `${process.version} (${process.platform}-${process.arch}), N-API ${process.versions.napi ?? 'unknown'}`, {
    node: process.versions.node,
    napi: process.versions.napi ?? null,
    platform: process.platform,
    arch: process.arch,
  });

  // libtorch, as a build would find it (scripts/libtorch/locate.js's order, never fetching).
  try {
    const located = await locateLibtorch({ allowFetch: false, log: () => undefined });
    add('libtorch', 'ok', `${located.fullVersion ?? located.version} (${located.variant}) from ${located.source}: ${located.root}`, located);
  } catch (err) {
    const tried = (err as { tried?: unknown }).tried;
    const why = Array.isArray(tried) ? tried.join('; ') : firstLine(err);
    const built = readJsonMaybe(path.join(PACKAGE_ROOT, 'build', 'peft-node-build.json'))?.libtorch as { root?: string } | undefined;
    const builtRoot = built?.root && fs.existsSync(built.root) ? built.root : undefined;
    add(
      'libtorch',
      builtRoot ? 'info' : 'warn',
      `a new build would not find one without fetching (${why})` +
        (builtRoot ? `; the addon's own libtorch is at ${builtRoot}` : '; only needed to build the addon: `peft-node libtorch install`'),
    );
  }

  // Which binary runs, against which libtorch, and why: the loader's own report (it never throws).
  let builtVersion: string | undefined;
  try {
    const r = addonReport();
    add('variant', 'info', `${r.variant} (${r.variantReason}) on ${r.platform}`);
    if (r.installRecord) {
      const lt = r.installRecord.libtorch;
      add('install', 'info', `${r.installRecord.addon} addon${lt ? ` against libtorch ${lt.fullVersion ?? lt.version ?? '?'} (${lt.variant ?? '?'}) at ${lt.root}` : ''}${r.installRecord.date ? `, ${r.installRecord.date}` : ''}`, r.installRecord);
      builtVersion = lt?.fullVersion ?? lt?.version ?? undefined;
    }
    for (const p of r.prebuilts)
      add('prebuilt', p.current ? 'ok' : 'warn', `${p.variant}: libtorch ${p.libtorch ?? '?'}, ${p.current ? 'current' : 'stale (built from other native sources; not used)'}` +
        (p.glibcRequired ? `, needs glibc ≥ ${p.glibcRequired}` : '') + (p.date ? `, built ${p.date}` : ''), p);
    if (r.chosen) {
      add('binary', 'ok', `${r.chosen.kind}: ${r.chosen.file}${r.chosen.libtorch ? ` with libtorch at ${r.chosen.libtorch}` : ''}` + (r.loaded ? ' (loaded in this process)' : ''), r.chosen);
      builtVersion ??= r.chosen.torchVersion ?? undefined;
    } else {
      add('binary', 'fail', 'no usable binary: run `npm run build:native`, or `peft-node libtorch install` then reinstall');
    }
    for (const a of r.attempts.filter((x) => !x.ok)) add('not used', 'warn', `${a.kind} ${a.file || ''}: ${firstLine(a.reason ?? 'rejected')}`, a);
  } catch (err) {
    add('binary', 'fail', firstLine(err));
  }

  // Does the addon load, and what does it run on?
  let addonOk = false;
  try {
    const addon = native();
    const info = addon.info();
    addonOk = true;
    add('addon', 'ok', `loads${process.env.PEFT_NODE_ADDON ? ` (PEFT_NODE_ADDON=${process.env.PEFT_NODE_ADDON})` : ''}`);
    const mismatch = builtVersion && !builtVersion.startsWith(info.torchVersion);
    add('torch', mismatch ? 'warn' : 'ok', `libtorch ${info.torchVersion} at run time${mismatch ? ` (built against ${builtVersion}: rebuild with \`npm run build:native\`)` : ''}`, {
      torchVersion: info.torchVersion,
    });
    add(
      'cuda',
      'info',
      info.cudaAvailable
        ? `available: ${info.cudaDeviceCount} device${info.cudaDeviceCount === 1 ? '' : 's'}`
        : `not available${info.builtWithCuda ? ' (the addon is built with CUDA, but no device is visible)' : ' (CPU build of libtorch)'}`,
      { available: info.cudaAvailable, device_count: info.cudaDeviceCount, built_with_cuda: info.builtWithCuda },
    );
    const cpu = info.cpu;
    if (cpu)
      add(
        'cpu',
        'info',
        `${cpu.modelName || cpu.vendor} (${cpu.vendor} family ${cpu.family} model ${cpu.model}); ATen kernels ${cpu.capability}; ` +
          `${cpu.isa.length ? cpu.isa.join(' ') : 'no AVX2'} (float32 bits match PEFT's only on the same CPU and kernels: README, Exactness)`,
        cpu,
      );
    const backend = /ATen parallel backend: (.*)/.exec(info.parallelInfo)?.[1]?.trim();
    const exact = (info as { exactMode?: unknown }).exactMode;
    add(
      'threads',
      'info',
      `${info.numThreads} intra-op threads${backend ? `, ${backend}` : ''} (set OMP_NUM_THREADS to change)` +
        (typeof exact === 'boolean' ? `; exact mode ${exact ? 'on' : 'off'}` : ''),
      { num_threads: info.numThreads, parallel_info: info.parallelInfo, exact_mode: typeof exact === 'boolean' ? exact : null },
    );
    const backends = info.distributedBackends ?? [];
    add(
      'parallel',
      backends.length ? 'info' : 'warn',
      backends.length
        ? `data-parallel training (train --nproc N): ${backends.join(', ')}`
        : 'no data-parallel training in this build (its libtorch has no usable Gloo process group)',
      { distributed_backends: backends },
    );
  } catch (err) {
    add('addon', 'fail', firstLine(err));
  }

  // Where the CLI keeps its state.
  try {
    const last = read_last_adapter(() => undefined);
    add('cache', 'info', `${cache_dir()}; last adapter: ${last ? last.adapter : `none (${last_adapter_file()})`}`, { dir: cache_dir(), last_adapter: last });
  } catch (err) {
    add('cache', 'warn', firstLine(err));
  }

  if (args.json === true) {
    out(JSON.stringify({ ok: addonOk, checks }, null, 2));
  } else {
    const mark: Record<Status, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', info: '    ' };
    for (const c of checks) out(`${mark[c.status]} ${c.name.padEnd(10)} ${c.detail}`);
    out(addonOk ? 'peft-node is ready.' : 'peft-node cannot run models: see the FAIL lines above.');
  }
  return addonOk ? 0 : 1;
}
