/**
 * peft-node: Parameter-Efficient Fine-Tuning (prefix tuning of BLOOM) for Node.js, on libtorch.
 * Names mirror Hugging Face transformers and PEFT so that Python notebooks port line by line.
 */
import './runtime/dispose_polyfill';

export { PeftNodeError, PeftNodeErrorCode } from './errors';
export { Tensor, TensorType, TensorData, NestedNumbers } from './tensor';
export { AutoModelForCausalLM } from './models/auto';
export { BloomConfig } from './models/bloom/configuration_bloom';
export {
  BloomForCausalLM,
  CausalLMInputs,
  CausalLMOutput,
  ForwardOptions,
  FromPretrainedOptions,
  Parameter,
} from './models/bloom/modeling_bloom';
export { PrefixEncoder, PrefixEncoderOptions, set_seed } from './peft/prefix_encoder';
export { readSafetensors, writeSafetensors } from './utils/safetensors';
export { runtime_info, set_num_threads } from './runtime/info';
