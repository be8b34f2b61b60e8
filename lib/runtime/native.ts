/**
 * Loads the native addon (the local build/Release/peft_node.node, or a prebuilt binary with the libtorch located for
 * it: see ./loader) on first use, so that importing peft-node never throws: a missing build or libtorch surfaces as
 * a named error (ERR_ADDON_LOAD / ERR_LIBTORCH_NOT_FOUND, listing what was tried) at the first call that needs it.
 */
import { loadAddon } from './loader';

export { PACKAGE_ROOT } from './loader';

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
  pastKeyValues?: NativePastKeyValues;
  lossScale?: number;
}

export interface NativeForwardResult {
  loss?: number;
  logits?: Float32Array | Float64Array;
  logitsDims?: number[];
}

/** A prompt's key/value prefix for every layer, [B, P, 2·L·D] (native/binding/past_key_values_wrap.cpp). */
export interface NativePastKeyValues {
  dims(): number[];
  /** The gradient of the raw prefix it was made from (fromPrefix), or null. */
  grad(): Promise<Float32Array | Float64Array | null>;
  dispose(): Promise<void>;
}

/** A native object that owns parameters: what a parameter list refers to, as [module, name]. */
export type NativeModule = NativeBloomModel | NativePrefixEncoder;
export type NativeParameterRef = [NativeModule, string];

/** torch.optim.AdamW over a parameter list (native/binding/optimizer_wrap.cpp). */
export interface NativeAdamW {
  step(lr: number): Promise<void>;
  zeroGrad(): Promise<void>;
  getState(): Promise<NativeOptimizerState>;
  setState(state: NativeOptimizerState): Promise<void>;
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
  pastKeyValues?: NativePastKeyValues;
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
  /** Share this model's thread. */
  model?: NativeBloomModel;
}

export interface NativePrefixEncoder {
  options(): Required<Omit<NativePrefixEncoderOptions, 'device' | 'model'>>;
  parameterInfo(): NativeParameterInfo[];
  namesWithGrad(): Promise<string[]>;
  getParameter(name: string): Promise<Float32Array>;
  getGrad(name: string): Promise<Float32Array | null>;
  setParameter(name: string, value: Float32Array | Float64Array): Promise<void>;
  zeroGrad(): Promise<void>;
  promptEmbeddings(): Promise<Float32Array>;
  /** PEFT's get_prompt(batch): past_key_values for `batch` rows, differentiable with requiresGrad. */
  getPrompt(batch: number, requiresGrad: boolean): Promise<NativePastKeyValues>;
  dispose(): Promise<void>;
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
  /** Exact mode: transformers' op graph, bit-identical to PEFT on one thread (see set_exact_mode). */
  exactMode: boolean;
  parallelInfo: string;
  /** Data-parallel backends of this build: ["gloo"], or [] when it was built without (see README). */
  distributedBackends: string[];
  /** The CPU libtorch's kernels are picked for (native/core/cpu_info.h); float32 bits are reproducible where it matches. */
  cpu: CpuInfo;
}

export interface CpuInfo {
  /** cpuid's vendor: "GenuineIntel", "AuthenticAMD", … ("" off x86). */
  vendor: string;
  /** Display family and model, as /proc/cpuinfo's "cpu family" and "model". */
  family: number;
  model: number;
  /** The brand string ("Intel(R) Xeon(R) Platinum 8480+", "AMD EPYC 9654 96-Core Processor"). */
  modelName: string;
  /** Usable ISA extensions among avx2, fma, avx512f, avx512_bf16, avx512_fp16, amx_bf16, amx_tile. */
  isa: string[];
  /** ATen's CPU capability, as torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2" or "DEFAULT". */
  capability: string;
}

/** A model directory's weights as stored, whatever their format (native/binding/checkpoint_wrap.cpp); for convert. */
export interface NativeCheckpoint {
  /** "safetensors", "safetensors (sharded)", "pytorch_model.bin" or "pytorch_model.bin (sharded)". */
  format(): string;
  /** The weights file, or the shard index, that was read. */
  file(): string;
  /** [name, safetensors dtype, shape, byteLength, aliasOf: an earlier entry with the same memory, else -1]. */
  entries(): [string, string, number[], number, number][];
  /** Bytes [offset, offset + length) of entry `index`: a Buffer over the mapped file (no copy). */
  data(index: number, offset: number, length: number): Buffer;
  dispose(): void;
}

export interface NativeProcessGroupOptions {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  /** This process hosts the TCPStore (rank 0, unless a launcher's agent does). */
  hostStore: boolean;
  timeoutMs: number;
  backend: string;
}

/** A c10d process group this process joined (native/binding/process_group_wrap.cpp). */
export interface NativeProcessGroup {
  rank(): number;
  worldSize(): number;
  /** Also sums `counters` over the ranks in the same all-reduce (exact up to 2^24). */
  averageGradients(parameters: NativeParameterRef[], counters?: Float64Array): Promise<Float64Array>;
  broadcastParameters(parameters: NativeParameterRef[]): Promise<Float64Array>;
  allGather(values: Float64Array): Promise<Float64Array>;
  allGatherString(value: string): Promise<string[]>;
  barrier(): Promise<void>;
  dispose(): Promise<void>;
}

export interface NativeAddon {
  BloomModel: { load(dir: string, device: string, dtype: string, options: { attnImplementation: string }): Promise<NativeBloomModel> };
  PrefixEncoder: { create(options: NativePrefixEncoderOptions): Promise<NativePrefixEncoder> };
  Checkpoint: { open(dir: string): Promise<NativeCheckpoint> };
  ProcessGroup: { create(options: NativeProcessGroupOptions): Promise<NativeProcessGroup> };
  PastKeyValues: { fromPrefix(prefix: Float32Array | Float64Array, numVirtualTokens: number, batch: number, requiresGrad: boolean, perRow: boolean): NativePastKeyValues };
  AdamW: { create(parameters: NativeParameterRef[], options: { beta1: number; beta2: number; eps: number; weightDecay: number[] }): NativeAdamW };
  /** torch.nn.utils.clip_grad_norm_: resolves with the pre-clip norm; max_norm <= 0 only measures. */
  clipGradNorm(parameters: NativeParameterRef[], maxNorm: number): Promise<number>;
  manualSeed(seed: number): void;
  setNumThreads(n: number): void;
  setExactMode(exact: boolean): void;
  shutdown?(): void;
  info(): NativeInfo;
  /** Bytes in use on the C heap (glibc mallinfo2), or null off glibc. */
  mallocInUse(): number | null;
}

let cached: NativeAddon | undefined;

/** The addon, loaded once. Throws ERR_ADDON_LOAD / ERR_LIBTORCH_NOT_FOUND explaining what to do when it cannot load. */
export function native(): NativeAddon {
  if (cached) return cached;
  cached = loadAddon<NativeAddon>().addon;
  // process.exit() joins libuv's threads without environment cleanup: release a decode waiting for its streamer.
  process.once('exit', () => cached?.shutdown?.());
  return cached;
}
