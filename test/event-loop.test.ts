/**
 * Heavy work runs off the main thread: timers keep firing while a forward+backward of several hundred ms runs, and
 * concurrent calls on one model give exactly the results of sequential ones.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoModelForCausalLM, CausalLMOutput, Tensor } from '../lib';
import { TINY, asNumbers, tmpDir, writeRandomBloom } from './helpers';


test('timers keep firing during a long forward + backward', async () => {
  const dir = tmpDir();
  try {
    writeRandomBloom(dir, 256, 4, 8, 1000);
    const m = await AutoModelForCausalLM.from_pretrained(dir);
    const B = 4, T = 256, P = 10;
    const ids = Array.from({ length: B }, (_, b) => Array.from({ length: T }, (_, i) => (b * 131 + i * 7) % 1000));
    const prefix = new Tensor('float32', new Float32Array(P * 2 * 4 * 256).fill(0.01), [P, 2 * 4 * 256]);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const start = performance.now();
    const out = await m.forward({ input_ids: ids, labels: ids }, { prefix, backward: true, return_logits: false });
    const elapsed = performance.now() - start;
    clearInterval(timer);
    await m.dispose();
    expect(Number.isFinite(out.loss)).toBe(true);
    expect(elapsed).toBeGreaterThan(100);
    // A blocked loop would give 0 or 1 tick; a live one about elapsed/5 (timers are coarse on a busy machine).
    expect(ticks).toBeGreaterThanOrEqual(Math.floor(elapsed / 5 / 4));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('concurrent forwards on one model equal sequential ones, in call order', async () => {
  const m = await AutoModelForCausalLM.from_pretrained(TINY);
  const batches = [
    { input_ids: [[5, 6, 7, 8]], labels: [[5, 6, 7, 8]] },
    { input_ids: [[9, 10, 11, 12, 13]], labels: [[-100, 10, 11, 12, 13]] },
    { input_ids: [[3, 3, 50, 60], [70, 80, 90, 100]], attention_mask: [[0, 0, 1, 1], [1, 1, 1, 1]], labels: [[-100, -100, 50, 60], [70, 80, 90, 100]] },
  ];
  const prefix = new Tensor('float32', Float32Array.from({ length: 2 * 128 }, (_, i) => Math.sin(i)), [2, 128]);
  const sequential: CausalLMOutput[] = [];
  for (const b of batches) sequential.push(await m.forward(b, { prefix, backward: true }));
  const concurrent = await Promise.all(batches.map((b) => m.forward(b, { prefix, backward: true })));
  concurrent.forEach((r, i) => {
    expect(r.loss).toBe(sequential[i].loss);
    expect(asNumbers(r.logits!)).toEqual(asNumbers(sequential[i].logits!));
    expect(asNumbers(r.prefix_grad!)).toEqual(asNumbers(sequential[i].prefix_grad!));
  });
  await m.dispose();
});
