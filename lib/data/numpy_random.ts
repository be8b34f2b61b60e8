/**
 * NumPy's `np.random.default_rng(seed).permutation(n)`, bit for bit: `SeedSequence` → `PCG64` → Fisher–Yates with
 * masked rejection sampling. HF datasets draws every `shuffle(seed)` / `train_test_split(seed)` order from it, so a
 * port must reproduce it exactly to select the same rows as Python.
 *
 * Sources: numpy/random/bit_generator.pyx (SeedSequence), numpy/random/src/pcg64 (PCG64 XSL-RR 128/64),
 * numpy/random/_generator.pyx (`shuffle` → `random_interval`, numpy/random/src/distributions/distributions.c).
 * Verified against numpy 2.4 by test/data.test.ts.
 */
import { PeftNodeError } from '../errors';

const MASK32 = 0xffffffffn;
const MASK64 = 0xffffffffffffffffn;
const MASK128 = (1n << 128n) - 1n;
/** PCG_DEFAULT_MULTIPLIER_128. */
const PCG_MULT = (2549297995355413924n << 64n) | 4865540595714422341n;

/** 32-bit wrapping multiply (Math.imul is signed; `>>> 0` makes it unsigned). */
const mul32 = (a: number, b: number): number => Math.imul(a, b) >>> 0;

/**
 * `np.random.SeedSequence(entropy).generate_state(4, np.uint64)` for an integer entropy and no spawn key: the 128-bit
 * PCG64 state and increment seeds, as [state_hi, state_lo, inc_hi, inc_lo] 64-bit words.
 */
export function seed_sequence_state(entropy: number | bigint): bigint[] {
  let e = BigInt(entropy);
  if (e < 0n) throw new PeftNodeError('ERR_INVALID_INPUT', `seed must be a non-negative integer, got ${entropy}`);
  // _coerce_to_uint32_array: little-endian 32-bit words, at least one.
  const words: number[] = [];
  do {
    words.push(Number(e & MASK32));
    e >>= 32n;
  } while (e > 0n);

  const INIT_A = 0x43b0d7e5;
  const MULT_A = 0x931e8875;
  const INIT_B = 0x8b51f9dd;
  const MULT_B = 0x58f38ded;
  const MIX_MULT_L = 0xca01f9dd;
  const MIX_MULT_R = 0x4973f715;
  let hashConst = INIT_A;
  const hashmix = (value: number): number => {
    value = (value ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_A);
    value = mul32(value, hashConst);
    return (value ^ (value >>> 16)) >>> 0;
  };
  const mix = (x: number, y: number): number => {
    const r = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };

  const pool = [0, 0, 0, 0];
  for (let i = 0; i < 4; i++) pool[i] = hashmix(i < words.length ? words[i] : 0);
  for (let src = 0; src < 4; src++)
    for (let dst = 0; dst < 4; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  for (let src = 4; src < words.length; src++)
    for (let dst = 0; dst < 4; dst++) pool[dst] = mix(pool[dst], hashmix(words[src]));

  // generate_state(4, uint64): 8 uint32 words, viewed as little-endian uint64 pairs.
  const out32: number[] = [];
  hashConst = INIT_B;
  for (let i = 0; i < 8; i++) {
    let v = (pool[i % 4] ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_B);
    v = mul32(v, hashConst);
    out32.push((v ^ (v >>> 16)) >>> 0);
  }
  return [0, 1, 2, 3].map((k) => (BigInt(out32[2 * k + 1]) << 32n) | BigInt(out32[2 * k]));
}

/** NumPy's PCG64 bit generator (XSL-RR 128/64), including its buffered 32-bit draws. */
export class PCG64 {
  private state = 0n;
  private readonly inc: bigint;
  private hasUint32 = false;
  private uinteger = 0;

  constructor(seed: number | bigint) {
    const [s0, s1, i0, i1] = seed_sequence_state(seed);
    // pcg_setseq_128_srandom_r
    this.inc = ((((i0 << 64n) | i1) << 1n) | 1n) & MASK128;
    this.step();
    this.state = (this.state + ((s0 << 64n) | s1)) & MASK128;
    this.step();
  }

  private step(): void {
    this.state = (this.state * PCG_MULT + this.inc) & MASK128;
  }

  /** Next raw 64-bit output (`bit_generator.random_raw()`). */
  next_uint64(): bigint {
    this.step();
    const hi = this.state >> 64n;
    const x = (hi ^ this.state) & MASK64;
    const rot = hi >> 58n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & MASK64;
  }

  /** Next 32-bit output: the low half of a 64-bit draw, then its high half. */
  next_uint32(): number {
    if (this.hasUint32) {
      this.hasUint32 = false;
      return this.uinteger;
    }
    const next = this.next_uint64();
    this.hasUint32 = true;
    this.uinteger = Number(next >> 32n);
    return Number(next & MASK32);
  }
}

/** NumPy's `Generator` (the subset HF datasets uses). */
export class Generator {
  constructor(readonly bit_generator: PCG64) {}

  /**
   * Uniform integer in [0, max] by masked rejection sampling, numpy's `random_interval`: draw 32 bits, keep the
   * smallest all-ones mask covering `max`, retry while the value exceeds `max`.
   */
  private interval(max: number): number {
    if (max === 0) return 0;
    let mask = max;
    for (const s of [1, 2, 4, 8, 16]) mask |= mask >>> s;
    mask >>>= 0;
    let value: number;
    do value = (this.bit_generator.next_uint32() & mask) >>> 0;
    while (value > max);
    return value;
  }

  /** `rng.permutation(n)`: a shuffled `arange(n)`. */
  permutation(n: number): number[] {
    if (!Number.isInteger(n) || n < 0)
      throw new PeftNodeError('ERR_INVALID_INPUT', `permutation size must be a non-negative integer, got ${n}`);
    if (n > 0xffffffff) throw new PeftNodeError('ERR_INVALID_INPUT', `permutation size ${n} exceeds 2**32 - 1`);
    const arr = Array.from({ length: n }, (_, i) => i);
    // Generator.shuffle (_shuffle_int): for i in reversed(range(1, n)): j = random_interval(i); swap.
    for (let i = n - 1; i >= 1; i--) {
      const j = this.interval(i);
      const t = arr[i];
      arr[i] = arr[j];
      arr[j] = t;
    }
    return arr;
  }
}

/** `np.random.default_rng(seed)`: a {@link Generator} over {@link PCG64} seeded through `SeedSequence`. */
export function default_rng(seed: number | bigint): Generator {
  if (typeof seed === 'number' && !Number.isSafeInteger(seed))
    throw new PeftNodeError('ERR_INVALID_INPUT', `seed must be an integer (use a bigint above 2**53), got ${seed}`);
  return new Generator(new PCG64(seed));
}
