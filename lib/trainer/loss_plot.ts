/** A learning curve as a small standalone SVG (loss per logged step, eval loss when present). */
import type { LogEntry } from './trainer_state';

export function loss_svg(log_history: LogEntry[], title = 'training loss'): string {
  const train = decimate(log_history.filter((e) => Number.isFinite(e.loss)).map((e) => [e.step, e.loss] as const));
  const evalPts = decimate(log_history.filter((e) => Number.isFinite(e.eval_loss)).map((e) => [e.step, e.eval_loss] as const));
  const all = [...train, ...evalPts];
  const W = 640, H = 360, L = 60, R = 20, T = 36, B = 44;
  // Loops, not Math.min(...xs): spreading a long run's log (> ~125k entries) overflows the call stack.
  let x0 = 0, x1 = 1, y0 = Infinity, y1 = -Infinity;
  for (const [x, y] of all) {
    x0 = Math.min(x0, x);
    x1 = Math.max(x1, x);
    y0 = Math.min(y0, y);
    y1 = Math.max(y1, y);
  }
  if (all.length === 0) [y0, y1] = [0, 1];
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const px = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const line = (pts: (readonly [number, number])[], color: string) =>
    pts.length === 0 ? '' :
      `<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>` +
      pts.map(([x, y]) => `<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="2.5" fill="${color}"/>`).join('');
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const y = y0 + f * (y1 - y0);
    return `<line x1="${L}" x2="${W - R}" y1="${py(y).toFixed(1)}" y2="${py(y).toFixed(1)}" stroke="#ddd"/>` +
      `<text x="${L - 6}" y="${(py(y) + 4).toFixed(1)}" text-anchor="end" font-size="11">${y.toPrecision(4)}</text>`;
  }).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${W / 2}" y="22" text-anchor="middle" font-size="14">${title}</text>
${ticks}
<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>
<text x="${L}" y="${H - B + 16}" font-size="11">${x0}</text><text x="${W - R}" y="${H - B + 16}" text-anchor="end" font-size="11">${x1}</text>
<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle" font-size="12">step</text>
${line(train, '#1f77b4')}${line(evalPts, '#d62728')}
${evalPts.length ? `<text x="${W - R}" y="${T - 6}" text-anchor="end" font-size="11"><tspan fill="#1f77b4">train</tspan> / <tspan fill="#d62728">eval</tspan></text>` : ''}
</svg>
`;
}

/** At most `max` points (every k-th, the last kept): a long run's curve stays a small file, quick to write. */
function decimate<T>(pts: T[], max = 2000): T[] {
  if (pts.length <= max) return pts;
  const k = Math.ceil(pts.length / max);
  const out = pts.filter((_, i) => i % k === 0);
  if ((pts.length - 1) % k !== 0) out.push(pts[pts.length - 1]);
  return out;
}
