/**
 * AutoTokenizer / PreTrainedTokenizer against transformers 5.17 (golden files from scripts/gen_fixtures.py and
 * scripts/gen_fixtures_data.py): ids, tokens, BLOOM's split regex piece by piece, decode, padding, truncation, pad(),
 * special tokens, save_pretrained, and the errors.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoTokenizer } from '../lib/tokenizer/auto';
import { PreTrainedTokenizer, TokenizerCallOptions, PadOptions, EncodedExample } from '../lib/tokenizer/tokenization_utils';
import { Tensor } from '../lib/tensor';
import { PeftNodeError } from '../lib/errors';
import { FIXTURES, GOLDEN, tmpDir } from './helpers';

const TOK_DIR = path.join(FIXTURES, 'tokenizer');
const DATA = path.join(FIXTURES, 'data');
const readJson = (p: string) => JSON.parse(fs.readFileSync(p, 'utf8'));

interface EncodeCase {
  text: string;
  input_ids: number[];
  attention_mask?: number[];
  tokens: string[];
  decoded: string;
  decoded_skip_special: string;
}
interface CallCase {
  text: string | string[];
  kwargs: TokenizerCallOptions;
  input_ids: number[] | number[][];
  attention_mask: number[] | number[][];
}
const baseCases: EncodeCase[] = readJson(path.join(GOLDEN, 'tokenizer_cases.json'));
const golden = readJson(path.join(DATA, 'tokenizer_golden.json')) as {
  attributes: Record<string, unknown>;
  encode: EncodeCase[];
  pretokenize: { text: string; pieces: string[] }[];
  calls: CallCase[];
  pads: { features: EncodedExample[] | Record<string, number[][]>; kwargs: PadOptions; output: Record<string, unknown> }[];
  decode_ids: { ids: number[]; decoded: string; decoded_skip_special: string }[];
  batch_decode: { ids: number[][]; decoded_skip_special: string[] };
  template: { dir: string; calls: CallCase[] };
};

/** Rejection with a PeftNodeError of `code` whose message matches `re` (duck-typed: errors may cross realms). */
async function expectError(p: Promise<unknown> | (() => unknown), code: string, re?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PeftNodeError);
  expect((err as PeftNodeError).code).toBe(code);
  if (re) expect((err as Error).message).toMatch(re);
}

let tok: PreTrainedTokenizer;
beforeAll(async () => {
  tok = await AutoTokenizer.from_pretrained(TOK_DIR);
});

describe('loading', () => {
  test('is a callable PreTrainedTokenizer with the config attributes of Python', () => {
    expect(typeof tok).toBe('function');
    expect(tok).toBeInstanceOf(PreTrainedTokenizer);
    const a = golden.attributes;
    expect({
      padding_side: tok.padding_side,
      truncation_side: tok.truncation_side,
      model_max_length: tok.model_max_length,
      clean_up_tokenization_spaces: tok.clean_up_tokenization_spaces,
      bos_token: tok.bos_token,
      bos_token_id: tok.bos_token_id,
      eos_token: tok.eos_token,
      eos_token_id: tok.eos_token_id,
      unk_token: tok.unk_token,
      unk_token_id: tok.unk_token_id,
      pad_token: tok.pad_token,
      pad_token_id: tok.pad_token_id,
      all_special_tokens: tok.all_special_tokens,
      all_special_ids: tok.all_special_ids,
      vocab_size: tok.vocab_size,
    }).toEqual(a);
    expect([tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]).toEqual([0, 1, 2, 3]);
    expect(tok.padding_side).toBe('left');
  });

  test('options override tokenizer_config.json', async () => {
    const t = await AutoTokenizer.from_pretrained(TOK_DIR, { padding_side: 'right', model_max_length: 8 });
    expect(t.padding_side).toBe('right');
    expect(t.model_max_length).toBe(8);
    expect(t('Hello world! How are you?', { truncation: true }).input_ids).toHaveLength(8);
  });

  test('without tokenizer_config.json: padding_side "right", no length limit', async () => {
    const dir = tmpDir();
    fs.copyFileSync(path.join(TOK_DIR, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
    const t = await AutoTokenizer.from_pretrained(dir);
    expect(t.padding_side).toBe('right');
    expect(t.model_max_length).toBe(1e30);
    expect(t.pad_token).toBeNull();
    expect(t.pad_token_id).toBeNull();
    await expectError(() => t(['a', 'bb'], { padding: true }), 'ERR_INVALID_INPUT', /does not have a padding token/);
    t.pad_token = '</s>'; // the usual fix: pad with eos
    const [a, b] = [t('a').input_ids, t('Hello world').input_ids];
    expect(b.length).toBeGreaterThan(a.length);
    expect(t(['a', 'Hello world'], { padding: true }).input_ids).toEqual([[...a, ...new Array(b.length - a.length).fill(2)], b]);
  });

  test('missing directory or tokenizer.json → ERR_FILE_NOT_FOUND naming the path', async () => {
    await expectError(AutoTokenizer.from_pretrained('/nonexistent/tok'), 'ERR_FILE_NOT_FOUND', /\/nonexistent\/tok/);
    const dir = tmpDir();
    fs.copyFileSync(path.join(TOK_DIR, 'tokenizer_config.json'), path.join(dir, 'tokenizer_config.json'));
    await expectError(AutoTokenizer.from_pretrained(dir), 'ERR_FILE_NOT_FOUND', new RegExp(`${dir}/tokenizer\\.json`));
  });

  test('malformed config → ERR_JSON with file, line and column; bad padding_side → ERR_CONFIG', async () => {
    const dir = tmpDir();
    fs.copyFileSync(path.join(TOK_DIR, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{\n  "padding_side": "left",\n  "eos_token": </s>\n}\n');
    await expectError(AutoTokenizer.from_pretrained(dir), 'ERR_JSON', /tokenizer_config\.json: invalid JSON at line 3 column 16/);
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{"padding_side": "middle"}');
    await expectError(AutoTokenizer.from_pretrained(dir), 'ERR_CONFIG', /padding_side must be "left" or "right"/);
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{}');
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"model": {"type": "BPE", "vocab": {}, "merges": []},\n "decoder": nul}');
    await expectError(AutoTokenizer.from_pretrained(dir), 'ERR_JSON', /tokenizer\.json: invalid JSON at line 2 column 13/);
  });
});

describe('encoding equals Python', () => {
  test.each(baseCases.map((c) => [JSON.stringify(c.text), c] as const))('golden/tokenizer_cases %s', (_, c) => {
    const enc = tok(c.text);
    expect(enc.input_ids).toEqual(c.input_ids);
    expect(enc.attention_mask).toEqual(c.attention_mask);
    expect(tok.convert_ids_to_tokens(c.input_ids)).toEqual(c.tokens);
    expect(tok.decode(c.input_ids)).toBe(c.decoded);
    expect(tok.decode(c.input_ids, { skip_special_tokens: true })).toBe(c.decoded_skip_special);
    expect(tok.encode(c.text)).toEqual(c.input_ids);
  });

  test.each(golden.encode.map((c) => [JSON.stringify(c.text), c] as const))('extra %s', (_, c) => {
    expect(tok(c.text).input_ids).toEqual(c.input_ids);
    expect(tok.tokenize(c.text)).toEqual(c.tokens);
    expect(tok.decode(c.input_ids)).toBe(c.decoded);
    expect(tok.decode(c.input_ids, { skip_special_tokens: true })).toBe(c.decoded_skip_special);
  });

  test("BLOOM's Split regex cuts every text into Python's pieces (Unicode whitespace, punctuation, brackets)", () => {
    expect(golden.pretokenize.length).toBeGreaterThanOrEqual(20);
    for (const c of golden.pretokenize) expect([c.text, tok.backend.pre_tokenizer!.pre_tokenize(c.text)]).toEqual([c.text, c.pieces]);
    // The class `[^(\s|[.,!?…。，、।۔،])]` nests a bracket expression; NEL (U+0085) is whitespace, ZWSP is not.
    const nel = golden.pretokenize[0].pieces;
    expect(nel).toContain('Âħ');
    expect(nel).toContain('fâĢĭgï»¿h');
  });

  test('decode round-trips wherever Python does', () => {
    const all = [...baseCases, ...golden.encode];
    const roundTrips = all.filter((c) => c.decoded === c.text);
    expect(roundTrips.length).toBeGreaterThan(15);
    for (const c of roundTrips) expect(tok.decode(tok.encode(c.text))).toBe(c.text);
  });
});

/** Runs tokenizer(text, kwargs) and returns plain arrays (checking int64 tensors when asked for). */
function callPlain(t: PreTrainedTokenizer, c: CallCase): { input_ids: unknown; attention_mask: unknown } {
  if (c.kwargs.return_tensors === 'pt') {
    const enc = t(c.text, { ...c.kwargs, return_tensors: 'pt' });
    for (const v of [enc.input_ids, enc.attention_mask]) {
      expect(v).toBeInstanceOf(Tensor);
      expect(v.type).toBe('int64');
      expect(v.dims).toEqual([Array.isArray(c.text) ? c.text.length : 1, (Array.isArray(c.input_ids[0]) ? c.input_ids[0] : c.input_ids).length as number]);
    }
    return { input_ids: enc.input_ids.tolist(), attention_mask: enc.attention_mask.tolist() };
  }
  return t(c.text as string, { ...c.kwargs, return_tensors: null });
}

describe('padding and truncation equal Python', () => {
  test.each(golden.calls.map((c) => [`${JSON.stringify(c.text)} ${JSON.stringify(c.kwargs)}`, c] as const))('tokenizer(%s)', (_, c) => {
    // Python's tensors come back as nested lists, with the batch axis of 1 for a single text.
    expect(callPlain(tok, c)).toEqual({ input_ids: c.input_ids, attention_mask: c.attention_mask });
  });

  test('left padding puts pad ids (3) and mask 0 before the tokens', () => {
    const enc = tok(['你好', 'Hello world! How are you?'], { padding: true });
    expect(enc.input_ids[0].slice(0, 11)).toEqual(new Array(11).fill(3));
    expect(enc.attention_mask[0]).toEqual([...new Array(11).fill(0), 1, 1]);
    expect(enc.input_ids[1]).toEqual(tok('Hello world! How are you?').input_ids);
  });

  test.each(golden.template.calls.map((c) => [`${JSON.stringify(c.text)} ${JSON.stringify(c.kwargs)}`, c] as const))(
    'template post-processor (<s> $A </s>): truncation keeps the special tokens %s',
    async (_, c) => {
      const t = await AutoTokenizer.from_pretrained(path.join(DATA, 'tokenizer-template'));
      expect(callPlain(t, c)).toEqual({ input_ids: c.input_ids, attention_mask: c.attention_mask });
    },
  );

  test('truncation_side "left" keeps the end', () => {
    const ids = tok('Hello world! How are you?').input_ids;
    tok.truncation_side = 'left';
    try {
      expect(tok('Hello world! How are you?', { max_length: 4 }).input_ids).toEqual(ids.slice(-4));
    } finally {
      tok.truncation_side = 'right';
    }
  });

  test('invalid combinations are named errors', async () => {
    await expectError(() => tok(['a', 'b'], { truncation: true, max_length: 5, padding: true, pad_to_multiple_of: 4 }), 'ERR_INVALID_INPUT', /not a multiple of pad_to_multiple_of \(4\)/);
    await expectError(() => tok(['a', 'bb'], { return_tensors: 'pt' }), 'ERR_INVALID_INPUT', /different lengths \(1, 2\).*padding/);
    await expectError(() => tok(42 as unknown as string), 'ERR_INVALID_INPUT', /string or an array of strings/);
    await expectError(() => tok('a', { max_length: -1 }), 'ERR_INVALID_INPUT', /max_length/);
  });
});

describe('pad()', () => {
  test.each(golden.pads.map((c) => [`${JSON.stringify(c.features)} ${JSON.stringify(c.kwargs)}`, c] as const))('tokenizer.pad(%s)', (_, c) => {
    const out = tok.pad(c.features as EncodedExample[], c.kwargs as PadOptions & { return_tensors?: null }) as Record<string, unknown>;
    const plain = Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v instanceof Tensor ? (expect(v.type).toBe('int64'), v.tolist()) : v]));
    expect(plain).toEqual(c.output);
  });

  test('pad() errors name the problem', async () => {
    await expectError(() => tok.pad([{ attention_mask: [1] } as unknown as EncodedExample]), 'ERR_INVALID_INPUT', /includes input_ids/);
    await expectError(() => tok.pad([]), 'ERR_INVALID_INPUT', /non-empty/);
  });
});

describe('decode', () => {
  test.each(golden.decode_ids.map((c) => [JSON.stringify(c.ids), c] as const))('ids outside the vocabulary are skipped like Python: %s', (_, c) => {
    expect(tok.decode(c.ids)).toBe(c.decoded);
    expect(tok.decode(c.ids, { skip_special_tokens: true })).toBe(c.decoded_skip_special);
  });

  test('batch_decode, Tensor and typed-array inputs, empty input', () => {
    const { ids, decoded_skip_special } = golden.batch_decode;
    expect(tok.batch_decode(ids, { skip_special_tokens: true })).toEqual(decoded_skip_special);
    const t = Tensor.from([[43, 593, 2]], 'int64');
    expect(tok.batch_decode(t)).toEqual(['Hell</s>']);
    expect(tok.decode(t)).toBe(tok.decode([43, 593, 2]));
    expect(tok.decode(new Int32Array([43, 593]))).toBe(tok.decode([43, 593]));
    expect(tok.decode([])).toBe('');
    expect(tok.decode(43)).toBe(tok.decode([43]));
  });

  test('negative ids (label padding) are an error, not silently dropped', async () => {
    await expectError(() => tok.decode([43, -100]), 'ERR_INVALID_INPUT', /-100.*label padding/);
  });

  test('convert_tokens_to_ids: unknown tokens give unk_token_id', () => {
    expect(tok.convert_tokens_to_ids(['<s>', '</s>', 'Human:', 'no-such-token'])).toEqual([1, 2, 272, 0]);
    expect(tok.convert_ids_to_tokens([1, 99999])).toEqual(['<s>', null]);
  });
});

describe('save_pretrained', () => {
  test('writes the three files; reloading gives the same tokenizer and the current settings', async () => {
    const dir = tmpDir();
    const t = await AutoTokenizer.from_pretrained(TOK_DIR);
    t.padding_side = 'right';
    const written = await t.save_pretrained(dir);
    expect(written.map((p) => path.basename(p)).sort()).toEqual(['special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
    expect(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')).toBe(fs.readFileSync(path.join(TOK_DIR, 'tokenizer.json'), 'utf8'));
    expect(readJson(path.join(dir, 'special_tokens_map.json'))).toEqual(readJson(path.join(TOK_DIR, 'special_tokens_map.json')));
    const cfg = readJson(path.join(dir, 'tokenizer_config.json'));
    expect(cfg).toMatchObject({ padding_side: 'right', model_max_length: 2048, eos_token: '</s>', tokenizer_class: 'BloomTokenizerFast' });
    const again = await AutoTokenizer.from_pretrained(dir);
    expect(again.padding_side).toBe('right');
    for (const c of baseCases) expect(again(c.text).input_ids).toEqual(c.input_ids);
  });
});
