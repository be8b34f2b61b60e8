/** The examples run as documented, on the embedded tiny model and demo data. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { main as forwardBackward } from '../examples/forward-backward';
import { main as generateExample } from '../examples/generate';
import { main as seedRun } from '../examples/prefix-tuning-bloom';
import { tmpDir } from './helpers';

test('examples/forward-backward.ts runs on the tiny checkpoint and prints a finite loss and gradient', async () => {
  const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
  try {
    const { loss, gradNorm } = await forwardBackward();
    expect(Number.isFinite(loss) && loss > 0).toBe(true);
    expect(gradNorm).toBeGreaterThan(0);
    expect(log.mock.calls.map((c) => String(c[0])).join('\n')).toMatch(/loaded .*57,536 parameters \(float32, cpu\)[\s\S]*loss \d+\.\d{6}/);
  } finally {
    log.mockRestore();
  }
});

test("examples/prefix-tuning-bloom.ts: the seed notebook's whole run (1 epoch, bs 1, GA 8), then generation with the trained prefix", async () => {
  const out = tmpDir();
  try {
    const r = await seedRun({ output: out, quiet: true });
    // 32 demo rows, bs 1, GA 8 → 4 updates; no log line (logging_steps 10) but the final metrics.
    expect(r.result.global_step).toBe(4);
    expect(Number.isFinite(r.result.training_loss)).toBe(true);
    expect(r.trainable).toBe('trainable params: 1,280 || all params: 58,816');
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) expect(fs.existsSync(path.join(r.adapter, f))).toBe(true);
    for (const f of ['trainer_state.json', 'tokenizer.json', 'tokenizer_config.json', 'loss.svg']) expect([f, fs.existsSync(path.join(out, 'checkpoint-4', f))]).toEqual([f, true]);
    expect(typeof r.text).toBe('string');
    expect(r.text.startsWith('Human: 考试有哪些技巧？')).toBe(true);

    // examples/generate.ts with that adapter streams text.
    let streamed = '';
    const text = await generateExample({ adapter: r.adapter, max_new_tokens: 8, write: (s) => (streamed += s) });
    expect(streamed.trim()).toBe(text.trim());
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
