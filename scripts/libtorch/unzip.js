'use strict';
// Zip extraction: unzip, else python3's zipfile, else a small Node reader (slim images often have neither).
// Only entries under `prefixes` are extracted (a wheel also carries Python sources we do not need).

const realFs = require('fs');
const path = require('path');
const { execFailure } = require('./exec.js');

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

module.exports = { extractZip, extractZipNode };
