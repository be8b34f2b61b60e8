'use strict';
// Lock: <cacheRoot>/<key>.lock, created with O_EXCL ('wx'), holding {pid, hostname, nonce, since}.
// A holder refreshes its mtime every lockHeartbeatMs. The lock is stale when its pid is dead (same host) or it was
// not refreshed for lockStaleMs (another host on a shared home, a reused pid, a hung process). The lock only avoids
// duplicate work: the final rename is atomic, so even a wrongly broken lock cannot produce a half-written cache.
// Options (from the locate context): fs, log, lockTimeoutMs, lockPollMs, lockHeartbeatMs, lockStaleMs.

const os = require('os');
const crypto = require('crypto');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function readLockFile(fs, file) {
  let st;
  let raw;
  try {
    st = fs.statSync(file);
    raw = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw e;
  }
  let info = null;
  try {
    info = JSON.parse(raw);
  } catch {
    /* being written right now, or garbage */
  }
  return { raw, info, mtimeMs: st.mtimeMs };
}

function pidAlive(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

function staleReason(ctx, holder) {
  const age = Date.now() - holder.mtimeMs;
  if (!holder.info) return age > 10_000 ? `unreadable lock, ${Math.round(age / 1000)} s old` : null;
  if (holder.info.hostname === os.hostname() && !pidAlive(holder.info.pid)) {
    return `its pid ${holder.info.pid} is not running`;
  }
  if (age > ctx.lockStaleMs) return `no heartbeat for ${Math.round(age / 1000)} s`;
  return null;
}

function breakLock(ctx, lockPath, holder) {
  // Rename first (atomic): of two processes breaking the same stale lock only one gets it. If what we moved away is
  // not the lock we judged stale (someone re-created it in between), put it back.
  const tomb = `${lockPath}.stale-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    ctx.fs.renameSync(lockPath, tomb);
  } catch (e) {
    if (e.code === 'ENOENT') return;
    throw e;
  }
  const moved = readLockFile(ctx.fs, tomb);
  if (moved && moved.raw !== holder.raw) {
    try {
      ctx.fs.linkSync(tomb, lockPath);
    } catch {
      /* a third process took the lock meanwhile; the atomic final rename still keeps the cache consistent */
    }
  }
  ctx.fs.rmSync(tomb, { force: true });
}

async function acquireLock(ctx, lockPath) {
  const fs = ctx.fs;
  const me = { pid: process.pid, hostname: os.hostname(), nonce: crypto.randomBytes(8).toString('hex'), since: new Date().toISOString() };
  const raw = JSON.stringify(me);
  const deadline = Date.now() + ctx.lockTimeoutMs;
  let announced = false;
  for (;;) {
    let fd = null;
    try {
      fd = fs.openSync(lockPath, 'wx');
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
    if (fd !== null) {
      try {
        fs.writeSync(fd, raw);
      } finally {
        fs.closeSync(fd);
      }
      const beat = setInterval(() => {
        try {
          const t = new Date();
          fs.utimesSync(lockPath, t, t);
        } catch {
          /* lock broken by someone else: the atomic rename keeps us safe */
        }
      }, ctx.lockHeartbeatMs);
      beat.unref();
      return {
        release() {
          clearInterval(beat);
          const now = readLockFile(fs, lockPath);
          if (now && now.raw === raw) fs.rmSync(lockPath, { force: true });
        },
      };
    }
    const holder = readLockFile(fs, lockPath);
    if (!holder) continue; // released between our open and read
    const stale = staleReason(ctx, holder);
    if (stale) {
      ctx.log(`breaking stale lock ${lockPath} (${stale})`);
      breakLock(ctx, lockPath, holder);
      continue;
    }
    if (Date.now() > deadline) {
      const who = holder.info ? `pid ${holder.info.pid} on ${holder.info.hostname}` : 'an unknown process';
      throw new Error(
        `timed out after ${Math.round(ctx.lockTimeoutMs / 1000)} s waiting for ${lockPath} held by ${who}; ` +
          `delete it if no other peft-node install is running`,
      );
    }
    if (!announced) {
      const who = holder.info ? `pid ${holder.info.pid} on ${holder.info.hostname}` : 'another process';
      ctx.log(`waiting for ${who}, which is fetching libtorch into the cache (lock ${lockPath})`);
      announced = true;
    }
    await sleep(ctx.lockPollMs);
  }
}

module.exports = { acquireLock };
