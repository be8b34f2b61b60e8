/**
 * `peft-node generate`: one prompt → text streamed to stdout as it is generated (PeftModel.generate with a
 * TextStreamer), by default with the adapter `peft-node train` saved last, in the seed's Human/Assistant template.
 */
import type { Argv } from 'yargs';
import {
  Args,
  TEMPLATES,
  TemplateName,
  UsageError,
  adapter_flag,
  adapter_options,
  apply_template,
  model_load_flags,
  generation_flags,
  generation_options,
  model_options,
  note,
  string_flag,
  write,
} from '../common';
import { choose_model, load_for_generation, stream_answer } from '../generation';

export const command = 'generate [prompt]';
export const describe = 'Generate text from a prompt with a base model and a prefix-tuning adapter, streamed as it comes';

export function builder(y: Argv): Argv {
  return generation_options(
    model_options(
      adapter_options(
        y
          .positional('prompt', { type: 'string', describe: 'the prompt (or --prompt)' })
          .option('prompt', { type: 'string', alias: 'p', describe: 'the prompt (as the first argument, or --prompt / -p TEXT)' })
          .option('template', {
            type: 'string',
            choices: TEMPLATES as unknown as string[],
            describe: 'human-assistant: "Human: {prompt}\\n\\nAssistant: " (the training format); none: the prompt as is',
            default: 'human-assistant',
          }),
      ),
    ),
  )
    .example('$0 generate --prompt "你好"', 'with the last adapter `peft-node train` saved (or the embedded model)')
    .example('$0 generate --model ./bloom-1b4-zh --adapter ./chatbot/adapter -p "考试有哪些技巧？"', 'a given base model and adapter')
    .example('$0 generate -p "Once upon a time" --template none --no-adapter --do-sample --seed 1', 'plain sampling from the base model');
}

export async function handler(args: Args): Promise<number> {
  const prompt = string_flag(args, 'prompt');
  if (prompt === undefined) throw new UsageError('a prompt is needed: peft-node generate --prompt TEXT');
  const template = (string_flag(args, 'template') ?? 'human-assistant') as TemplateName;
  const gen = generation_flags(args);
  const load = model_load_flags(args);
  const choice = choose_model(string_flag(args, 'model'), adapter_flag(args));
  if (choice.adapter) note(`adapter ${choice.adapter} on ${choice.model}`);
  else note(`model ${choice.model} (no adapter)`);
  const loaded = await load_for_generation(choice, load);
  try {
    await stream_answer(loaded, apply_template(template, prompt), gen, (t) => write(t));
    write('\n');
  } finally {
    await loaded.dispose();
  }
  return 0;
}
