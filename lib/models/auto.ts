/** AutoModelForCausalLM: picks the architecture from config.json's model_type (BLOOM only in version 1). */
import { BloomConfig } from './bloom/configuration_bloom';
import { BloomForCausalLM, FromPretrainedOptions } from './bloom/modeling_bloom';

export class AutoModelForCausalLM {
  /** Loads a local model directory. Another model_type fails with ERR_UNSUPPORTED_MODEL naming it. */
  static async from_pretrained(dir: string, options: FromPretrainedOptions = {}): Promise<BloomForCausalLM> {
    BloomConfig.from_pretrained(dir); // validates config.json and model_type before loading weights
    return BloomForCausalLM.from_pretrained(dir, options);
  }
}
