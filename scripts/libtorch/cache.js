'use strict';
// The cache entry <cacheRoot>/<version>-<variant>: complete only when its marker (written last, fsync'd) is there.

const fs = require('fs');
const path = require('path');
const { MARKER, variantMatches, inSupportedRange } = require('./facts.js');
const { readMarker, inspectLibtorch, makeResult } = require('./inspect.js');

function cacheKey(ctx) {
  return `${ctx.version}-${ctx.variant}`;
}

/** { result } for a complete entry of ctx's version and variant, else { result: null, reason }. */
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

/** Writes the marker that makes `root` a complete entry (last, and synced: a crash before it leaves no marker). */
function writeMarker(fsImpl, root, marker) {
  const fd = fsImpl.openSync(path.join(root, MARKER), 'w');
  try {
    fsImpl.writeSync(fd, `${JSON.stringify(marker, null, 2)}\n`);
    fsImpl.fsyncSync(fd);
  } finally {
    fsImpl.closeSync(fd);
  }
}

/** Supported versions with a complete entry of `variant` in the cache, newest first ("2.14.1", ...). */
function cachedVersions(cacheRoot, variant) {
  let names = [];
  try {
    names = fs.readdirSync(cacheRoot);
  } catch {
    /* no cache */
  }
  return names
    .map((d) => /^(\d+)\.(\d+)\.(\d+)-(.+)$/.exec(d))
    .filter((m) => m && m[4] === variant && fs.existsSync(path.join(cacheRoot, m[0], MARKER)))
    .map((m) => [Number(m[1]), Number(m[2]), Number(m[3])])
    .filter((nums) => inSupportedRange(nums))
    .sort((a, b) => b[0] - a[0] || b[1] - a[1] || b[2] - a[2])
    .map((nums) => nums.join('.'));
}

module.exports = { cacheKey, fromCache, writeMarker, cachedVersions };
