/**
 * Talk to a model, with or without a trained prefix adapter: streams the answer as it is generated.
 *
 *   npx tsx examples/generate.ts [--model DIR] [--adapter DIR] [--prompt TEXT]
 */
import * as path from 'node:path';
import { AutoModelForCausalLM, AutoTokenizer, PeftModel } from '../lib';

export async function main(opts: { model?: string; adapter?: string; prompt?: string; max_new_tokens?: number; write?: (s: string) => void } = {}) {
  const modelDir = opts.model ?? path.join(__dirname, '..', 'assets', 'tiny-bloom');
  const write = opts.write ?? ((s: string) => process.stdout.write(s));
  const tokenizer = await AutoTokenizer.from_pretrained(modelDir);
  await using model = await AutoModelForCausalLM.from_pretrained(modelDir);
  const prompt = `Human: ${opts.prompt ?? '你好，介绍一下你自己。'}\n\nAssistant: `;
  const inputs = tokenizer(prompt, { return_tensors: 'pt' });
  const generator = opts.adapter ? await PeftModel.from_pretrained(model, opts.adapter) : model;
  let text = '';
  for await (const piece of generator.generate_stream(tokenizer, { ...inputs, max_new_tokens: opts.max_new_tokens ?? 32 })) {
    write(piece);
    text += piece;
  }
  write('\n');
  if (generator !== model) await (generator as PeftModel).dispose();
  return text;
}

function argValue(flag: string): string | undefined {
  const i = process.argv.indexOf(flag);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (require.main === module) {
  main({ model: argValue('--model'), adapter: argValue('--adapter'), prompt: argValue('--prompt') }).catch((err) => {
    console.error(`${(err as { code?: string }).code ?? 'Error'}: ${(err as Error).message}`);
    process.exit(1);
  });
}
