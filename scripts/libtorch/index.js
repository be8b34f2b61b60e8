'use strict';
// Which libtorch, from where, and how a binary gets loaded against it: the one module that owns these facts, for
// build time (scripts/install.js, scripts/prebuild.js, binding.gyp and cmake through scripts/libtorch.js) and run
// time (lib/runtime, through index.d.ts). Node builtins only: it runs from `npm install` before the TypeScript is
// compiled and from binding.gyp's command expansions.
//
//   facts.js      pin, supported versions, variants and their matching, cache paths, error codes
//   inspect.js    reading a libtorch dir (version, variant, CUDA, compile definitions)
//   locate.js     THE search order (explicit dir > install record > Python torch > cache > fetch), async and sync
//   cache.js      cache entries and their completion marker
//   fetch.js      pip wheel / libtorch zip into the cache; lock.js (the cache lock), unzip.js, exec.js
//   prebuilt.js   prebuilds/ layout, native source hash, does a prebuilt fit a libtorch
//   preload.js    dlopen of a libtorch (and CUDA libraries) before a prebuilt addon
//   test-load.js  a binary's test load in a child process, with a cached verdict
//   cli.js        `node scripts/libtorch.js locate|install`

const facts = require('./facts.js');
const { resolveRoot, inspectLibtorch } = require('./inspect.js');
const { cachedVersions } = require('./cache.js');
const { locateLibtorch, locateLibtorchSync, explicitLibtorch, installLibtorch } = require('./locate.js');
const { downloadUrl } = require('./fetch.js');
const { extractZipNode } = require('./unzip.js');
const prebuilt = require('./prebuilt.js');
const { preloadLibtorch, cudaLibrarySearchDirs, realpath } = require('./preload.js');
const { testLoad } = require('./test-load.js');
const { main } = require('./cli.js');

module.exports = {
  PACKAGE_ROOT: facts.PACKAGE_ROOT,
  PINNED_VERSION: facts.PINNED_VERSION,
  PINNED_VARIANT: facts.PINNED_VARIANT,
  MARKER: facts.MARKER,
  ERR_NOT_FOUND: facts.ERR_NOT_FOUND,
  ERR_INVALID: facts.ERR_INVALID,
  readJson: facts.readJson,
  variantMatches: facts.variantMatches,
  envVariant: facts.envVariant,
  cacheBase: facts.cacheBase,
  defaultCacheRoot: facts.defaultCacheRoot,
  defaultVerdictDir: facts.defaultVerdictDir,
  resolveRoot,
  inspectLibtorch,
  cachedVersions,
  locateLibtorch,
  locateLibtorchSync,
  explicitLibtorch,
  installLibtorch,
  downloadUrl,
  extractZipNode,
  ...prebuilt,
  preloadLibtorch,
  cudaLibrarySearchDirs,
  realpath,
  testLoad,
  main,
};
