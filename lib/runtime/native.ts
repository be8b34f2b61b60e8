/**
 * Loads the native addon (build/Release/peft_node.node, or a prebuild) on first use, so that importing peft-node
 * never throws: a missing build or libtorch surfaces as a named error at the first call that needs it.
 */
import * as path from 'node:path';
import { PeftNodeError } from '../errors';

/** Package root: lib/runtime (ts-jest) and dist/runtime (built) are both two levels down. */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

export interface NativeForwardInputs {
  inputIds: Int32Array;
  batch: number;
  seqLen: number;
  attentionMask?: Int32Array;
  labels?: Int32Array;
  numItemsInBatch?: number;
}

export interface NativeForwardOptions {
  backward?: boolean;
  returnLogits?: boolean;
  prefix?: Float32Array | Float64Array;
  numVirtualTokens?: number;
  encoder?: NativePrefixEncoder;
}

export interface NativeForwardResult {
  loss?: number;
  logits?: Float32Array | Float64Array;
  logitsDims?: number[];
  prefixGrad?: Float32Array | Float64Array;
}

/** [name, shape, requires_grad] as the native tensors report them. */
export type NativeParameterInfo = [string, number[], boolean];

export interface NativeBloomModel {
  config(): Record<string, unknown> & { dtype: string; device: string };
  parameterInfo(): NativeParameterInfo[];
  getParameter(name: string): Promise<Float32Array>;
  getGrad(name: string): Promise<Float32Array | null>;
  namesWithGrad(): Promise<string[]>;
  setParameter(name: string, value: Float32Array | Float64Array): Promise<void>;
  forward(inputs: NativeForwardInputs, options: NativeForwardOptions): Promise<NativeForwardResult>;
  generate(inputs: NativeForwardInputs, options: NativeGenerateOptions): Promise<NativeGenerateResult>;
  dispose(): Promise<void>;
  isDisposed(): boolean;
}

export interface NativeGenerateOptions {
  maxNewTokens: number;
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  eosTokenIds?: number[];
  padTokenId?: number;
  seed?: number;
  outputScores?: boolean;
  prefix?: Float32Array | Float64Array;
  numVirtualTokens?: number;
  encoder?: NativePrefixEncoder;
  /** Each step's new tokens (one per row); returning false stops after this step. */
  onStep?: (tokens: Int32Array) => boolean | void;
}

export interface NativeGenerateResult {
  sequences: Int32Array;
  dims: number[];
  scores?: Float32Array;
  scoresDims?: number[];
}

export interface NativePrefixEncoderOptions {
  numVirtualTokens: number;
  numLayers: number;
  tokenDim: number;
  encoderHiddenSize?: number;
  prefixProjection?: boolean;
  inferenceMode?: boolean;
  zeroInit?: boolean;
  device?: string;
}

export interface NativePrefixEncoder {
  options(): Required<Omit<NativePrefixEncoderOptions, 'device'>>;
  parameterInfo(): NativeParameterInfo[];
  namesWithGrad(): Promise<string[]>;
  getParameter(name: string): Promise<Float32Array>;
  getGrad(name: string): Promise<Float32Array | null>;
  setParameter(name: string, value: Float32Array | Float64Array): Promise<void>;
  zeroGrad(): Promise<void>;
  promptEmbeddings(): Promise<Float32Array>;
  optimizerStep(options: NativeOptimizerStep): Promise<number>;
  getOptimizerState(): Promise<NativeOptimizerState>;
  setOptimizerState(state: NativeOptimizerState): Promise<void>;
  dispose(): Promise<void>;
}

export interface NativeOptimizerStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** One value per parameter, in parameter order. */
  weightDecay: number[];
  /** <= 0: measure the norm without clipping. */
  maxGradNorm: number;
}

/** AdamW state in parameter order (empty arrays before the first step). */
export interface NativeOptimizerState {
  step: number[];
  exp_avg: (Float32Array | null)[];
  exp_avg_sq: (Float32Array | null)[];
}

export interface NativeInfo {
  torchVersion: string;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  builtWithCuda: boolean;
  numThreads: number;
  parallelInfo: string;
}

export interface NativeAddon {
  BloomModel: { load(dir: string, device: string, dtype: string): Promise<NativeBloomModel> };
  PrefixEncoder: { create(options: NativePrefixEncoderOptions): Promise<NativePrefixEncoder> };
  manualSeed(seed: number): void;
  setNumThreads(n: number): void;
  info(): NativeInfo;
}

let cached: NativeAddon | undefined;

/** The addon, loaded once. Throws ERR_ADDON_LOAD explaining how to build it when it cannot be loaded. */
export function native(): NativeAddon {
  if (cached) return cached;
  const override = process.env.PEFT_NODE_ADDON;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    cached = (override ? require(override) : require('node-gyp-build')(PACKAGE_ROOT)) as NativeAddon;
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new PeftNodeError(
      'ERR_ADDON_LOAD',
      `peft-node's native addon could not be loaded (${msg}).\n` +
        `Build it with \`npm run build:native\` (it locates or fetches libtorch; set PEFT_NODE_LIBTORCH to use your ` +
        `own libtorch directory), or see \`node scripts/libtorch.js locate\` for where libtorch is looked for.`,
      { cause: err },
    );
  }
  return cached;
}
