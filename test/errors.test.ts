/**
 * Bad input never crashes the process: each case below is a rejected Promise (or a thrown error) with a named code
 * and a message naming the culprit.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoModelForCausalLM, BloomForCausalLM, PeftNodeError, Tensor, readSafetensors } from '../lib';
import { serializeSafetensors } from '../lib/utils/safetensors';
import { TINY, tmpDir } from './helpers';

let dir: string;
let model: BloomForCausalLM;
const config = fs.readFileSync(path.join(TINY, 'config.json'), 'utf8');
const weights = readSafetensors(path.join(TINY, 'model.safetensors')).tensors;

beforeAll(async () => {
  dir = tmpDir();
  model = await AutoModelForCausalLM.from_pretrained(TINY);
});
afterAll(async () => {
  await model.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A model dir with the tiny config and `weights` as its model.safetensors bytes. */
function modelDir(name: string, weightBytes: Buffer | undefined, configText = config): string {
  const d = path.join(dir, name);
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'config.json'), configText);
  if (weightBytes) fs.writeFileSync(path.join(d, 'model.safetensors'), weightBytes);
  return d;
}

/** A safetensors file whose header is `header` (object or raw string) followed by `dataBytes` bytes. */
function rawSafetensors(header: unknown, dataBytes: number): Buffer {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const out = Buffer.alloc(8 + json.length + dataBytes);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  return out;
}

async function expectCode(p: Promise<unknown>, code: string, ...fragments: string[]): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PeftNodeError);
  expect((err as PeftNodeError).code).toBe(code);
  for (const f of fragments) expect((err as Error).message).toContain(f);
}

describe('loading', () => {
  test('missing config.json names the path', async () => {
    const d = path.join(dir, 'empty');
    fs.mkdirSync(d);
    await expectCode(AutoModelForCausalLM.from_pretrained(d), 'ERR_FILE_NOT_FOUND', path.join(d, 'config.json'));
  });

  test('missing weights name the files looked for', async () => {
    const d = modelDir('noweights', undefined);
    await expectCode(AutoModelForCausalLM.from_pretrained(d), 'ERR_FILE_NOT_FOUND', path.join(d, 'model.safetensors'), 'model.safetensors.index.json');
  });

  test('a shard listed in the index but absent names it', async () => {
    const d = modelDir('badshard', undefined);
    fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'transformer.ln_f.bias': 'model-00009-of-00009.safetensors' } }));
    await expectCode(AutoModelForCausalLM.from_pretrained(d), 'ERR_FILE_NOT_FOUND', 'model-00009-of-00009.safetensors');
  });

  test('another architecture is refused, naming its model_type', async () => {
    const d = modelDir('llama', undefined, JSON.stringify({ ...JSON.parse(config), model_type: 'llama' }));
    await expectCode(AutoModelForCausalLM.from_pretrained(d), 'ERR_UNSUPPORTED_MODEL', "'llama'");
  });

  test('invalid config values are refused', async () => {
    const d = modelDir('badcfg', serializeSafetensors([...weights.entries()]), JSON.stringify({ ...JSON.parse(config), n_head: 5 }));
    await expectCode(AutoModelForCausalLM.from_pretrained(d), 'ERR_CONFIG', 'not divisible by n_head');
  });

  test.each([
    ['truncated header (4 bytes)', () => Buffer.from([1, 2, 3, 4]), 'ERR_SAFETENSORS_HEADER', 'truncated'],
    ['header length beyond the file', () => { const b = rawSafetensors({}, 0); b.writeBigUInt64LE(1000n, 0); return b; }, 'ERR_SAFETENSORS_HEADER', 'beyond the end of the file'],
    ['header length above 100 MB', () => { const b = rawSafetensors({}, 0); b.writeBigUInt64LE(2n ** 40n, 0); return b; }, 'ERR_SAFETENSORS_HEADER', '100 MB'],
    ['header that is not JSON', () => rawSafetensors('{"a": [1, 2', 0), 'ERR_SAFETENSORS_HEADER', 'invalid JSON'],
    ['unknown dtype', () => rawSafetensors({ x: { dtype: 'F8_E9M9', shape: [1], data_offsets: [0, 1] } }, 1), 'ERR_SAFETENSORS_DTYPE', 'F8_E9M9'],
    ['offsets outside the file', () => rawSafetensors({ x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 8), 'ERR_SAFETENSORS_OFFSETS', "'x'"],
    ['offsets not matching shape x dtype', () => rawSafetensors({ x: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8), 'ERR_SAFETENSORS_OFFSETS', 'do not match shape'],
    ['overlapping tensors', () => rawSafetensors({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), 'ERR_SAFETENSORS_OFFSETS', 'overlap'],
    ['a shape whose size overflows', () => rawSafetensors({ x: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } }, 4), 'ERR_SAFETENSORS_OFFSETS', 'overflows'],
  ])('safetensors: %s', async (name, bytes, code, fragment) => {
    const d = modelDir(name.replace(/\W+/g, '_'), bytes());
    await expectCode(AutoModelForCausalLM.from_pretrained(d), code, fragment, path.join(d, 'model.safetensors'));
  });

  test('a missing weight is named', async () => {
    const kept = [...weights.entries()].filter(([n]) => n !== 'transformer.h.1.self_attention.dense.bias');
    const d = modelDir('missing_weight', serializeSafetensors(kept));
    await expectCode(AutoModelForCausalLM.from_pretrained(d), 'ERR_WEIGHT_MISSING', 'transformer.h.1.self_attention.dense.bias');
  });

  test('a weight of the wrong shape is named with expected and found shapes', async () => {
    const swapped = [...weights.entries()].map(([n, t]): [string, Tensor] =>
      n === 'transformer.h.0.mlp.dense_h_to_4h.weight' ? [n, new Tensor('float32', t.data as Float32Array, [32, 128])] : [n, t],
    );
    const d = modelDir('wrong_shape', serializeSafetensors(swapped));
    await expectCode(AutoModelForCausalLM.from_pretrained(d), 'ERR_SHAPE_MISMATCH', 'transformer.h.0.mlp.dense_h_to_4h.weight', '[32, 128]', '[128, 32]');
  });

  test('a device this libtorch cannot use gives a clear error', async () => {
    await expectCode(AutoModelForCausalLM.from_pretrained(TINY, { device: 'cuda' }), 'ERR_DEVICE', "'cuda'");
    await expectCode(AutoModelForCausalLM.from_pretrained(TINY, { device: 'tpu' }), 'ERR_DEVICE', 'tpu');
    await expectCode(AutoModelForCausalLM.from_pretrained(TINY, { dtype: 'int8' }), 'ERR_INVALID_INPUT', 'int8');
  });
});

describe('forward inputs', () => {
  const ids = [[5, 6, 7, 8]];
  test.each([
    ['a negative token id', { input_ids: [[5, -1, 7, 8]] }, 'token id -1'],
    ['a token id >= vocab_size', { input_ids: [[5, 1000, 7, 8]] }, 'token id 1000'],
    ['attention_mask of another shape', { input_ids: ids, attention_mask: [[1, 1, 1]] }, 'attention_mask has shape [1,3]'],
    ['labels of another shape', { input_ids: ids, labels: [[1, 2, 3, 4, 5]] }, 'labels has shape [1,5]'],
    ['a label below -100', { input_ids: ids, labels: [[-100, -5, 7, 8]] }, 'labels contain -5'],
    ['a label >= vocab_size', { input_ids: ids, labels: [[-100, 1000, 7, 8]] }, 'labels contain 1000'],
    ['a mask value other than 0/1', { input_ids: ids, attention_mask: [[1, 2, 1, 1]] }, 'only 0 and 1'],
    ['ragged input_ids', { input_ids: [[1, 2], [3]] }, 'ragged'],
    ['non-integer ids', { input_ids: [[1.5, 2]] }, '32-bit integers'],
    ['num_items_in_batch of 0', { input_ids: ids, labels: ids, num_items_in_batch: 0 }, 'num_items_in_batch'],
  ])('%s', async (_name, inputs, fragment) => {
    await expectCode(model.forward(inputs as never), 'ERR_INVALID_INPUT', fragment);
  });

  test('backward without labels', async () => {
    await expectCode(model.forward({ input_ids: ids }, { backward: true }), 'ERR_INVALID_INPUT', 'backward needs labels');
  });

  test('a prefix of the wrong width', async () => {
    await expectCode(model.forward({ input_ids: ids }, { prefix: new Float32Array(10) }), 'ERR_SHAPE_MISMATCH', '[num_virtual_tokens, 128]');
  });

  test('the model still works after all of the above', async () => {
    const out = await model.forward({ input_ids: ids, labels: ids });
    expect(Number.isFinite(out.loss)).toBe(true);
  });
});

test('a disposed model refuses work with ERR_DISPOSED; dispose waits for a running call', async () => {
  const m = await AutoModelForCausalLM.from_pretrained(TINY);
  const running = m.forward({ input_ids: [[5, 6, 7]], labels: [[5, 6, 7]] });
  const disposed = m.dispose();
  expect(Number.isFinite((await running).loss)).toBe(true);
  await disposed;
  await expectCode(m.forward({ input_ids: [[5, 6, 7]] }), 'ERR_DISPOSED');
  await expectCode(m.get_parameter('transformer.ln_f.bias'), 'ERR_DISPOSED');
  expect(() => m.named_parameters()).toThrow(PeftNodeError);
  await m.dispose(); // idempotent
});
