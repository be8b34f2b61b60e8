/**
 * Independent of PEFT: in float64, the prefix gradient from backward agrees with central finite differences of the
 * loss, for a plain prefix and for a left-padded batch with num_items_in_batch.
 */
import { AutoModelForCausalLM, BloomForCausalLM, Tensor } from '../lib';
import { TINY } from './helpers';

let model: BloomForCausalLM;
beforeAll(async () => {
  model = await AutoModelForCausalLM.from_pretrained(TINY, { dtype: 'float64' });
});
afterAll(() => model.dispose());

/** A small deterministic PRNG so the test data is fixed. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
}

test.each([
  ['unpadded, mean loss', undefined, undefined],
  ['left padded, sum / num_items_in_batch', [[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]], 9],
])('%s', async (_name, mask, numItems) => {
  expect(model.dtype).toBe('float64');
  const P = 3;
  const width = 2 * model.config.n_layer * model.config.hidden_size;
  const rnd = lcg(7);
  const prefix = new Tensor('float64', Float64Array.from({ length: P * width }, () => rnd()), [P, width]);
  const input_ids = [[3, 3, 17, 250, 31, 402, 9, 77], [5, 600, 42, 8, 19, 991, 2, 64]];
  const labels = [[-100, -100, -100, 250, 31, 402, 9, 77], [-100, -100, 42, 8, 19, 991, 2, 64]];
  const batch = { input_ids, labels, attention_mask: mask, num_items_in_batch: numItems };
  const out = await model.forward(batch, { prefix, backward: true, return_logits: false });
  expect(out.prefix_grad!.type).toBe('float64');
  const grad = out.prefix_grad!.data as Float64Array;

  const lossAt = async (data: Float64Array) =>
    (await model.forward(batch, { prefix: new Tensor('float64', data, [P, width]), return_logits: false })).loss!;
  const h = 1e-6;
  // A few entries per region: keys and values of the first and last layer, first and last virtual token.
  const probes = [0, 5, width / 2 + 3, width - 1, width + 11, 2 * width + width / 4, P * width - 7];
  for (const i of probes) {
    const plus = Float64Array.from(prefix.data as Float64Array);
    const minus = Float64Array.from(prefix.data as Float64Array);
    plus[i] += h;
    minus[i] -= h;
    const fd = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * h);
    expect(Math.abs(fd - grad[i])).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(grad[i])) + 1e-9);
  }
  // Not every probe may be trivially zero: the check must see real gradient.
  expect(probes.some((i) => Math.abs(grad[i]) > 1e-4)).toBe(true);
});
