/**
 * peft-node: Parameter-Efficient Fine-Tuning (prefix tuning of BLOOM) for Node.js, on libtorch.
 * Names mirror Hugging Face transformers and PEFT so that Python notebooks port line by line.
 */
import './runtime/dispose_polyfill';

export { ERROR_CODES, PeftNodeError, PeftNodeErrorCode, isErrorCode } from './errors';
export { Tensor, TensorType, TensorData, NestedNumbers } from './tensor';
export { AutoModelForCausalLM } from './models/auto';
export { BloomConfig } from './models/bloom/configuration_bloom';
export {
  BloomForCausalLM,
  CausalLMInputs,
  CausalLMOutput,
  ForwardOptions,
  AttnImplementation,
  FromPretrainedOptions,
} from './models/bloom/modeling_bloom';
export { Parameter } from './nn/parameter';
export { PastKeyValues } from './cache_utils';
export { AdamW, AdamWOptions, AdamWParamState, ParamGroup } from './optim/adamw';
export { clip_grad_norm_ } from './optim/clip_grad';
export { PrefixEncoder, PrefixEncoderOptions } from './peft/prefix_encoder';
export { set_seed } from './runtime/rng';
export { readSafetensors, writeSafetensors } from './utils/safetensors';
export { runtime_info, set_exact_mode, set_num_threads } from './runtime/info';
export { malloc_in_use_bytes } from './runtime/memory';
export type { CpuInfo, NativeInfo as RuntimeInfo } from './runtime/native';
export { PEFT_FORMAT_VERSION, PeftType, PrefixTuningConfig, PrefixTuningConfigFields, TaskType } from './peft/config';
export {
  PeftForwardOptions,
  PeftFromPretrainedOptions,
  PeftModel,
  PeftModelForCausalLM,
  SavePretrainedOptions,
  count_prefix_tuning_parameters,
  format_trainable_parameters,
  get_peft_model,
} from './peft/peft_model';
export { get_peft_model_state_dict, set_peft_model_state_dict } from './peft/save_and_load';
export { AutoTokenizer, AutoTokenizerOptions } from './tokenizer/auto';
export {
  PreTrainedTokenizer,
  BatchEncoding,
  DecodeOptions,
  EncodedExample,
  PadOptions,
  PaddedBatch,
  PaddingStrategy,
  TokenizerCallOptions,
  TruncationStrategy,
} from './tokenizer/tokenization_utils';
export { load_dataset, LoadDatasetOptions } from './data/load_dataset';
export { Dataset, DatasetDict, Row, Batch, MapOptions, FilterOptions, ShuffleOptions, TrainTestSplitOptions } from './data/dataset';
export { DataFiles } from './data/data_files';
export { default_rng } from './data/numpy_random';
export {
  DataCollatorForSeq2Seq,
  DataCollatorForSeq2SeqOptions,
  Seq2SeqBatch,
  Seq2SeqFeature,
} from './data/data_collator';
export { TrainingArguments, TrainingArgumentsOptions } from './trainer/training_args';
export { Trainer, TrainerOptions, TrainOptions, TrainOutput, DataCollator } from './trainer/trainer';
export { TrainerCallback, PrinterCallback, ProgressCallback } from './trainer/callbacks';
export { TrainerState } from './trainer/trainer_state';
export { GenerationConfig, GenerationConfigFields } from './generation/configuration_utils';
export { GenerateOptions, GenerateOutput } from './generation/utils';
export { BaseStreamer, TextStreamer, TextStreamerOptions } from './generation/streamers';
export { convert_checkpoint, ConvertOptions, ConvertResult } from './models/convert';
export {
  DistributedEnv,
  InitProcessGroupOptions,
  ProcessGroup,
  destroy_process_group,
  distributed_env,
  get_rank,
  get_world_size,
  init_process_group,
  is_initialized,
} from './distributed/process_group';
export { LaunchOptions, LaunchResult, WorkerExit, launch } from './distributed/launch';
