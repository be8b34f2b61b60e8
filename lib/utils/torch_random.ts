/**
 * torch.randperm(n, generator=torch.Generator().manual_seed(seed)) on CPU, bit for bit: torch's mt19937 (standard
 * 32-bit seeding) drives a Fisher–Yates pass that swaps r[i] with r[i + u32() % (n - i)] (peft-reference
 * Appendix B). This is the sample order of HF Trainer's seeded RandomSampler.
 */
export class MT19937 {
  private readonly mt = new Uint32Array(624);
  private index = 624;

  constructor(seed: number) {
    this.mt[0] = seed >>> 0;
    for (let k = 1; k < 624; k++) {
      const prev = this.mt[k - 1] ^ (this.mt[k - 1] >>> 30);
      // 1812433253 * prev + k, modulo 2^32, without losing bits to float multiplication
      this.mt[k] = (Math.imul(1812433253, prev) + k) >>> 0;
    }
  }

  u32(): number {
    if (this.index >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = (this.mt[k] & 0x80000000) | (this.mt[(k + 1) % 624] & 0x7fffffff);
        this.mt[k] = this.mt[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}

/** torch.randperm(n, generator seeded with `seed`) for n < 2^32 / 20 (torch switches algorithm above that). */
export function randperm(n: number, seed: number): number[] {
  if (!Number.isSafeInteger(n) || n < 0 || n >= 2 ** 32 / 20) throw new RangeError(`randperm: unsupported n ${n}`);
  const g = new MT19937(seed);
  const r = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < n - 1; i++) {
    const z = g.u32() % (n - i);
    [r[i], r[i + z]] = [r[i + z], r[i]];
  }
  return r;
}
