/**
 * Writes that never leave a half file or a half directory behind: data goes to a temporary name on the same
 * filesystem, is flushed, and is renamed into place (rename is atomic on POSIX).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

let counter = 0;
function tmpName(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.tmp-${process.pid}-${Date.now()}-${counter++}`);
}

/** Writes a file atomically: a temp file in the same directory, fsync, then rename over the target. */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const tmp = tmpName(file);
  const fd = fs.openSync(tmp, 'w');
  try {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    for (let off = 0; off < buf.length; ) off += fs.writeSync(fd, buf, off, buf.length - off);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

/**
 * Creates directory `dir` with the files `write(tmpDir)` puts in a temporary sibling, then renames it into place, so
 * `dir` appears complete or not at all. When `dir` already exists (e.g. a Trainer output_dir holding checkpoints),
 * each written file is moved in with an atomic rename instead, files listed in `last` after the others; the
 * directory's other entries are left alone.
 */
export function writeDirAtomic(dir: string, write: (tmpDir: string) => void, last: string[] = []): void {
  fs.mkdirSync(path.dirname(path.resolve(dir)), { recursive: true });
  const tmp = tmpName(dir);
  fs.mkdirSync(tmp);
  try {
    write(tmp);
    if (!fs.existsSync(dir)) {
      fs.renameSync(tmp, dir);
      return;
    }
    const moveIn = (name: string) => {
      const from = path.join(tmp, name);
      const to = path.join(dir, name);
      if (fs.statSync(from).isDirectory()) {
        writeDirAtomic(to, (inner) => {
          for (const child of fs.readdirSync(from)) fs.renameSync(path.join(from, child), path.join(inner, child));
        }, last);
      } else {
        fs.renameSync(from, to);
      }
    };
    const names = fs.readdirSync(tmp);
    for (const name of names.filter((n) => !last.includes(n))) moveIn(name);
    for (const name of last.filter((n) => names.includes(n))) moveIn(name);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
