/**
 * `peft-node chat`: an interactive loop over the Human/Assistant template — read a line, stream the answer — on a
 * terminal or on piped stdin. `exit`, `quit` or end of input ends it; on a terminal Ctrl-C stops the answer being
 * written, and at the prompt ends the chat.
 */
import * as readline from 'node:readline';
import type { Argv } from 'yargs';
import {
  Args,
  adapter_flag,
  adapter_options,
  model_load_flags,
  generation_flags,
  generation_options,
  human_assistant_prompt,
  model_options,
  note,
  output_closed,
  string_flag,
  write,
} from '../common';
import { choose_model, load_for_generation, stream_answer } from '../generation';

export const command = 'chat';
export const describe = 'Chat with a model and adapter in the Human/Assistant template (reads lines from stdin)';

export function builder(y: Argv): Argv {
  return generation_options(
    model_options(
      adapter_options(y).option('history', {
        type: 'boolean',
        describe: 'keep earlier turns in the prompt (the seed trains single turns, so each turn stands alone by default)',
        default: false,
      }),
    ),
  )
    .example('$0 chat', 'chat with the last adapter `peft-node train` saved')
    .example('$0 chat --model ./bloom-1b4-zh --adapter ./chatbot/adapter --do-sample --top-p 0.9', 'a given model, sampling')
    .example('printf "你好\\nexit\\n" | $0 chat', 'scripted: one answer per input line');
}

export async function handler(args: Args): Promise<number> {
  const gen = generation_flags(args);
  const load = model_load_flags(args);
  const history = args.history === true;
  const choice = choose_model(string_flag(args, 'model'), adapter_flag(args));
  const tty = process.stdin.isTTY === true && process.stdout.isTTY === true;
  const loaded = await load_for_generation(choice, load);
  note(`${choice.adapter ? `adapter ${choice.adapter} on ${choice.model}` : `model ${choice.model} (no adapter)`}`);
  if (tty) note('type a message; `exit`, `quit` or Ctrl-D ends the chat, Ctrl-C stops an answer');

  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: tty });
  let generating = false;
  let stop = false;
  rl.on('SIGINT', () => {
    if (generating) stop = true;
    else rl.close();
  });
  const turns: string[] = [];
  try {
    if (tty) {
      rl.setPrompt('Human: ');
      rl.prompt();
    }
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === 'exit' || line === 'quit') break;
      if (line === '') {
        if (tty) rl.prompt();
        continue;
      }
      const turn = human_assistant_prompt(line);
      const prompt = (history ? turns.join('') : '') + turn;
      write('Assistant: ');
      generating = true;
      stop = false;
      let answer: string;
      try {
        answer = await stream_answer(loaded, prompt, gen, (t) => write(t), () => stop);
      } finally {
        generating = false;
      }
      write(stop ? ' [stopped]\n' : '\n');
      if (history) turns.push(turn + answer.trim() + '\n');
      if (output_closed()) break;
      if (tty) rl.prompt();
    }
  } finally {
    rl.close();
    await loaded.dispose();
  }
  return 0;
}
