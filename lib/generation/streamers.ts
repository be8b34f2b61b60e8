/**
 * Streamers (transformers' BaseStreamer / TextStreamer): `put(ids)` gets the prompt, then each step's new tokens;
 * `end()` is called once at the end. TextStreamer turns tokens into text pieces that never split a character: a
 * byte-level BPE token can end in the middle of a UTF-8 sequence (common for Chinese), and such a tail is held back
 * until the next token completes it.
 */
export interface BaseStreamer {
  put(token_ids: number[]): void;
  end(): void;
}

/** What TextStreamer needs from a tokenizer. */
export interface Decoder {
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
}

export interface TextStreamerOptions {
  /** Do not emit the prompt (default false, as HF). */
  skip_prompt?: boolean;
  skip_special_tokens?: boolean;
  /** Receives each finalized piece of text (default: write to stdout). */
  on_text?: (text: string, stream_end: boolean) => void;
}

function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/** HF's TextStreamer for batch size 1: emits text at word boundaries, after CJK characters, and at newlines. */
export class TextStreamer implements BaseStreamer {
  private cache: number[] = [];
  private printed = 0;
  private promptNext = true;
  private readonly on_text: (text: string, stream_end: boolean) => void;

  constructor(private readonly tokenizer: Decoder, private readonly options: TextStreamerOptions = {}) {
    this.on_text = options.on_text ?? ((t, end) => process.stdout.write(end ? `${t}\n` : t));
  }

  put(token_ids: number[]): void {
    if (this.options.skip_prompt && this.promptNext) {
      this.promptNext = false;
      return;
    }
    this.promptNext = false;
    this.cache.push(...token_ids);
    const text = this.tokenizer.decode(this.cache, { skip_special_tokens: this.options.skip_special_tokens });
    let piece: string;
    if (text.endsWith('\ufffd')) {
      piece = ''; // an incomplete UTF-8 sequence: wait for the token that completes it
    } else if (text.endsWith('\n')) {
      piece = text.slice(this.printed);
      this.cache = [];
      this.printed = 0;
    } else if (text.length > 0 && isCjk(Array.from(text).at(-1)!.codePointAt(0)!)) {
      piece = text.slice(this.printed);
      this.printed += piece.length;
    } else {
      piece = text.slice(this.printed, text.lastIndexOf(' ') + 1);
      this.printed += piece.length;
    }
    if (piece) this.on_text(piece, false);
  }

  end(): void {
    let piece = '';
    if (this.cache.length > 0) {
      const text = this.tokenizer.decode(this.cache, { skip_special_tokens: this.options.skip_special_tokens });
      piece = text.slice(this.printed);
    }
    this.cache = [];
    this.printed = 0;
    this.promptNext = true;
    this.on_text(piece, true);
  }
}

/**
 * Runs `generate(streamer)` and yields its text pieces as they are produced (an async iterator over a TextStreamer).
 * Used by `model.generate_stream(tokenizer, options)`.
 */
export async function* stream_text(
  generate: (streamer: BaseStreamer) => Promise<unknown>,
  tokenizer: Decoder,
  options: Omit<TextStreamerOptions, 'on_text'> = {},
): AsyncGenerator<string, void, undefined> {
  const pieces: string[] = [];
  let wake: (() => void) | undefined;
  let done = false;
  let failure: unknown;
  const streamer = new TextStreamer(tokenizer, {
    skip_prompt: options.skip_prompt ?? true,
    skip_special_tokens: options.skip_special_tokens ?? true,
    on_text: (text) => {
      if (text) pieces.push(text);
      wake?.();
    },
  });
  generate(streamer).then(
    () => { done = true; wake?.(); },
    (err) => { failure = err; done = true; wake?.(); },
  );
  for (;;) {
    while (pieces.length) yield pieces.shift()!;
    if (done) break;
    await new Promise<void>((resolve) => (wake = resolve));
    wake = undefined;
  }
  while (pieces.length) yield pieces.shift()!;
  if (failure) throw failure;
}
