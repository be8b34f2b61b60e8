'use strict';
// Reading a libtorch directory without loading it: is it one, which version and variant, what a build needs from it.

const path = require('path');
const realFs = require('fs');
const { MARKER, parseVersion, variantFromLocal, cudaVariant } = require('./facts.js');

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

/** The completion marker of a cache entry: null when absent, {} when unreadable. */
function readMarker(fs, dir) {
  const text = readText(fs, path.join(dir, MARKER));
  if (text === null) return null;
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
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

/** A located libtorch, as every caller sees it (see index.d.ts, LocatedLibtorch). */
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

module.exports = { readMarker, resolveRoot, inspectLibtorch, makeResult };
