/**
 * The foundation in a few lines: load a BLOOM directory, run a forward pass with a trainable prefix (PEFT prefix
 * tuning's past_key_values), and get the loss and the prefix gradient — the same numbers PEFT computes.
 *
 *   npx tsx examples/forward-backward.ts [model_dir]     (defaults to the embedded tiny checkpoint)
 */
import * as path from 'node:path';
import { AutoModelForCausalLM, PrefixEncoder, set_seed } from '../lib';

export async function main(modelDir = path.join(__dirname, '..', 'assets', 'tiny-bloom')): Promise<{ loss: number; gradNorm: number }> {
  await using model = await AutoModelForCausalLM.from_pretrained(modelDir, { dtype: 'float32' });
  console.log(`loaded ${model.name_or_path}: ${model.num_parameters().toLocaleString('en-US')} parameters (${model.dtype}, ${model.device})`);

  // PEFT's PrefixEncoder for 10 virtual tokens, initialised like torch after torch.manual_seed(42).
  set_seed(42);
  await using encoder = await PrefixEncoder.create({
    num_virtual_tokens: 10,
    num_layers: model.config.n_layer,
    token_dim: model.config.hidden_size,
  });

  // Two rows, the second left-padded (pad id 3); labels -100 on the prompt and on padding.
  const batch = {
    input_ids: [[20, 21, 22, 23, 24, 25], [3, 3, 30, 31, 32, 33]],
    attention_mask: [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]],
    labels: [[-100, -100, 22, 23, 24, 25], [-100, -100, -100, 31, 32, 33]],
  };
  // The prefix as past_key_values (PEFT's get_prompt): a backward through the model reaches the encoder.
  await using past = await encoder.get_prompt(batch.input_ids.length, { requires_grad: true });
  const out = await model.forward(batch, { past_key_values: past, backward: true });
  const grad = (await encoder.get_grad('embedding.weight'))!.data as Float32Array;
  const gradNorm = Math.sqrt(grad.reduce((s, g) => s + g * g, 0));
  console.log(`loss ${out.loss!.toFixed(6)}, logits [${out.logits!.dims}], prefix gradient norm ${gradNorm.toExponential(4)}`);
  return { loss: out.loss!, gradNorm };
}

if (require.main === module) {
  main(process.argv[2]).catch((err) => {
    console.error(err instanceof Error ? `${(err as Error & { code?: string }).code ?? 'Error'}: ${err.message}` : err);
    process.exit(1);
  });
}
