/** The examples run as documented. */
import { main as forwardBackward } from '../examples/forward-backward';

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
