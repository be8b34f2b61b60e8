/**
 * torch.optim.AdamW (the single-tensor algorithm HF Trainer runs with optim="adamw_torch", op for op:
 * native/core/adamw.cpp) over Parameters of any native modules. Parameter groups carry their own lr, betas, eps and
 * weight_decay; a learning-rate schedule sets `param_groups[i].lr` before each step, as torch's LambdaLR does.
 */
import '../runtime/dispose_polyfill';
import { PeftNodeError, nativeCall } from '../errors';
import { Parameter, native_refs } from '../nn/parameter';
import { native, NativeAdamW, NativeOptimizerState } from '../runtime/native';
import { Tensor } from '../tensor';

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weight_decay?: number;
}

export interface ParamGroup {
  params: Parameter[];
  lr: number;
  betas: [number, number];
  eps: number;
  weight_decay: number;
}

/** One parameter's state: torch's `optimizer.state[p]` (exp_avg, exp_avg_sq are null before its first step). */
export interface AdamWParamState {
  step: number;
  exp_avg: Tensor | null;
  exp_avg_sq: Tensor | null;
}

export class AdamW {
  readonly param_groups: ParamGroup[];
  private natives?: Promise<(NativeAdamW | null)[]>;

  /** `params`: Parameters (one group with the defaults), or groups `{ params, lr?, betas?, eps?, weight_decay? }`. */
  constructor(params: Iterable<Parameter> | (Partial<ParamGroup> & { params: Parameter[] })[], defaults: AdamWOptions = {}) {
    const d = { lr: defaults.lr ?? 1e-3, betas: defaults.betas ?? ([0.9, 0.999] as [number, number]), eps: defaults.eps ?? 1e-8, weight_decay: defaults.weight_decay ?? 1e-2 };
    const list = [...params];
    const groups = list.length > 0 && !(list[0] instanceof Parameter) ? (list as (Partial<ParamGroup> & { params: Parameter[] })[]) : [{ params: list as Parameter[] }];
    for (const g of groups)
      if (typeof g !== 'object' || g === null || !Array.isArray(g.params))
        throw new PeftNodeError('ERR_INVALID_INPUT', 'AdamW takes Parameters (model.parameters()) or groups { params: Parameter[], lr?, betas?, eps?, weight_decay? }');
    this.param_groups = groups.map((g) => ({ ...d, ...g, params: [...g.params] }));
    const seen = new Set<Parameter>();
    for (const g of this.param_groups) {
      for (const p of g.params) {
        if (!(p instanceof Parameter)) throw new PeftNodeError('ERR_INVALID_INPUT', 'AdamW takes Parameters (model.parameters()) or parameter groups');
        if (seen.has(p)) throw new PeftNodeError('ERR_INVALID_INPUT', `AdamW: parameter '${p.name}' appears in more than one group`);
        seen.add(p);
      }
      const [b1, b2] = g.betas;
      if (![g.lr, b1, b2, g.eps, g.weight_decay].every((x) => typeof x === 'number' && Number.isFinite(x)) || g.lr < 0 || g.eps < 0 || !(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1))
        throw new PeftNodeError('ERR_INVALID_INPUT', `AdamW: invalid hyperparameters lr=${g.lr} betas=[${g.betas}] eps=${g.eps} weight_decay=${g.weight_decay}`);
    }
  }

  /** One native optimizer per group (each with its betas, eps and weight decay), made on first use. */
  private groups(): Promise<(NativeAdamW | null)[]> {
    return (this.natives ??= Promise.all(
      this.param_groups.map(async (g) => {
        if (g.params.length === 0) return null;
        const refs = await native_refs(g.params, 'AdamW');
        return nativeCall(async () =>
          native().AdamW.create(refs, { beta1: g.betas[0], beta2: g.betas[1], eps: g.eps, weightDecay: g.params.map(() => g.weight_decay) }),
        );
      }),
    ));
  }

  /** One update of every parameter that has a gradient, at each group's current lr. */
  async step(): Promise<void> {
    const natives = await this.groups();
    for (const [i, n] of natives.entries()) if (n) await nativeCall(() => n.step(this.param_groups[i].lr));
  }

  /** Sets every gradient to none (torch's default set_to_none=True). */
  async zero_grad(): Promise<void> {
    for (const n of await this.groups()) if (n) await nativeCall(() => n.zeroGrad());
  }

  /** Each parameter's state, in group order then parameter order (what a checkpoint stores). */
  async get_state(): Promise<AdamWParamState[]> {
    const out: AdamWParamState[] = [];
    for (const [i, n] of (await this.groups()).entries()) {
      const params = this.param_groups[i].params;
      const s: NativeOptimizerState = n ? await nativeCall(() => n.getState()) : { step: [], exp_avg: [], exp_avg_sq: [] };
      params.forEach((p, j) => {
        const m = s.exp_avg[j], v = s.exp_avg_sq[j];
        out.push({ step: s.step[j] ?? 0, exp_avg: m ? new Tensor('float32', m, p.shape) : null, exp_avg_sq: v ? new Tensor('float32', v, p.shape) : null });
      });
    }
    return out;
  }

  /** Restores what get_state returned (same parameters, same order). */
  async set_state(states: AdamWParamState[]): Promise<void> {
    const total = this.param_groups.reduce((n, g) => n + g.params.length, 0);
    if (states.length !== total) throw new PeftNodeError('ERR_SHAPE_MISMATCH', `optimizer state has ${states.length} entries, the optimizer has ${total} parameters`);
    let k = 0;
    for (const [i, n] of (await this.groups()).entries()) {
      const mine = states.slice(k, k + this.param_groups[i].params.length);
      k += mine.length;
      if (!n) continue;
      const fresh = mine.every((s) => s.step === 0 && !s.exp_avg);
      await nativeCall(() =>
        n.setState(
          fresh
            ? { step: [], exp_avg: [], exp_avg_sq: [] }
            : { step: mine.map((s) => s.step), exp_avg: mine.map((s) => (s.exp_avg?.data as Float32Array) ?? null), exp_avg_sq: mine.map((s) => (s.exp_avg_sq?.data as Float32Array) ?? null) },
        ),
      );
    }
  }
}
