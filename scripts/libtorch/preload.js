'use strict';
// Loading a located libtorch into this process before a prebuilt addon (which has no RUNPATH: the build machine's
// libtorch path means nothing elsewhere).
//
// The libraries are loaded through process.dlopen with RTLD_NOW | RTLD_NODELETE: process.dlopen rejects a library
// that is not an addon and dlclose()s it, RTLD_NODELETE keeps it mapped, and the dynamic linker then satisfies the
// addon's DT_NEEDED libtorch.so / libtorch_cpu.so / libc10.so by SONAME with the libraries already loaded. For a CUDA
// libtorch from pip wheels, libraries it cannot find (libcudart.so.13, ...) are looked up in the nvidia-* wheels next
// to it and loaded the same way. (LD_LIBRARY_PATH is read once, at process start, so it cannot be set from here; a
// library cannot re-exec its host process; an $ORIGIN-relative RUNPATH would need a link into the package.)

const fs = require('fs');
const os = require('os');
const path = require('path');

/** glibc's RTLD_NODELETE (Node's os.constants.dlopen does not list it). */
const RTLD_NODELETE = 0x1000;

let preloadedLibDir = null;

const exists = (p) => fs.existsSync(p);

function realpath(p) {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

function dlopenKeep(file, global) {
  const c = os.constants.dlopen;
  const flags = (c.RTLD_NOW ?? 2) | (global ? (c.RTLD_GLOBAL ?? 0x100) : 0) | RTLD_NODELETE;
  try {
    process.dlopen({ exports: {} }, file, flags);
  } catch (err) {
    // Expected: the library loaded, but it is not an addon (and stays mapped thanks to RTLD_NODELETE).
    if (/did not self-register/.test(err.message)) return;
    throw err;
  }
}

/** Where a pip CUDA torch's runtime libraries are: the nvidia-* wheels beside torch/, then a CUDA toolkit. */
function cudaLibrarySearchDirs(lt, env = process.env) {
  const dirs = [lt.libDir];
  const addLibDirs = (base, depth) => {
    let entries;
    try {
      entries = fs.readdirSync(base, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const p = path.join(base, e.name);
      if (e.name === 'lib' || e.name === 'lib64') dirs.push(p);
      else if (depth > 0) addLibDirs(p, depth - 1);
    }
  };
  addLibDirs(path.resolve(lt.root, '..', 'nvidia'), 2);
  for (const home of [env.CUDA_HOME, env.CUDA_PATH, '/usr/local/cuda']) {
    if (home) dirs.push(path.join(home, 'lib64'), path.join(home, 'lib'));
  }
  return [...new Set(dirs)].filter(exists);
}

/**
 * dlopen()s `file` (RTLD_NOW | RTLD_NODELETE); each library it needs that the dynamic linker cannot find is looked up
 * in searchDirs and loaded first, by absolute path, until it loads or a library is nowhere (then a clear Error).
 */
function dlopenResolving(file, global, searchDirs, seen = new Set()) {
  for (;;) {
    try {
      dlopenKeep(file, global);
      return;
    } catch (err) {
      const m = /(?:^|\s)([^\s:/]+\.so[.\d]*): cannot open shared object file/.exec(err.message);
      if (!m || seen.has(m[1])) throw err;
      seen.add(m[1]);
      const dirs = searchDirs();
      const found = dirs.map((d) => path.join(d, m[1])).find(exists);
      if (!found) {
        throw new Error(
          `${path.basename(file)} needs ${m[1]}, found neither by the dynamic linker nor in ${dirs.join(', ') || '(no CUDA library dirs)'}` +
            (/cu|nccl|nvshmem|nvrtc|nvJit/i.test(m[1])
              ? ' (a CUDA libtorch needs the CUDA runtime libraries: pip install the nvidia-* wheels its torch wheel requires, ' +
                'use the official libtorch zip, which bundles them, or add their dir to LD_LIBRARY_PATH)'
              : ''),
        );
      }
      dlopenResolving(found, true, searchDirs, seen);
    }
  }
}

/** Loads the libtorch a prebuilt needs into this process, once. Throws when another libtorch is already loaded. */
function preloadLibtorch(lt, env = process.env) {
  const libDir = realpath(lt.libDir);
  if (preloadedLibDir === libDir) return;
  if (preloadedLibDir) throw new Error(`another libtorch (${preloadedLibDir}) is already loaded in this process; cannot load ${libDir} too`);
  let dirs = null;
  const searchDirs = () => (dirs ??= cudaLibrarySearchDirs(lt, env));
  // As torch/__init__.py: the CUDA libraries' symbols globally first, then libtorch itself.
  const globalDeps = path.join(libDir, 'libtorch_global_deps.so');
  if (lt.cuda && exists(globalDeps)) dlopenResolving(globalDeps, true, searchDirs);
  for (const lib of ['libc10.so', 'libtorch_cpu.so', ...(lt.cuda ? ['libc10_cuda.so', 'libtorch_cuda.so'] : []), 'libtorch.so']) {
    const file = path.join(libDir, lib);
    if (exists(file)) dlopenResolving(file, false, searchDirs);
  }
  preloadedLibDir = libDir;
}

module.exports = { preloadLibtorch, cudaLibrarySearchDirs, realpath };
