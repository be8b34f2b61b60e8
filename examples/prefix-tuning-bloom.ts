/**
 * The seed notebook (Python PEFT prefix tuning of bloom-1b4-zh on alpaca_data_zh), ported line for line.
 *
 *   npx tsx examples/prefix-tuning-bloom.ts                                  # embedded tiny model + demo data
 *   npx tsx examples/prefix-tuning-bloom.ts --model ./bloom-1b4-zh --data ../shared/data --output ./chatbot
 *
 * Python → TS: the same names (load_dataset, AutoTokenizer, PrefixTuningConfig, get_peft_model, TrainingArguments,
 * Trainer, DataCollatorForSeq2Seq); everything that touches weights is awaited.
 */
import * as path from 'node:path';
import {
  AutoModelForCausalLM,
  AutoTokenizer,
  DataCollatorForSeq2Seq,
  PrefixTuningConfig,
  TaskType,
  Trainer,
  TrainingArguments,
  get_peft_model,
  load_dataset,
} from '../lib';

const ASSETS = path.join(__dirname, '..', 'assets');

export interface SeedRunOptions {
  model?: string;
  data?: string;
  output?: string;
  /** Override the notebook's settings (tests shorten the run). */
  num_train_epochs?: number;
  max_steps?: number;
  learning_rate?: number;
  prefix_projection?: boolean;
  quiet?: boolean;
}

export async function main(opts: SeedRunOptions = {}) {
  const modelDir = opts.model ?? path.join(ASSETS, 'tiny-bloom');
  const dataDir = opts.data ?? path.join(ASSETS, 'data');
  const outputDir = opts.output ?? './chatbot';
  const log = opts.quiet ? () => undefined : console.log;

  // ds = load_dataset("json", data_dir="./alpaca_data_zh/")["train"]
  const ds = (await load_dataset('json', { data_dir: dataDir })).train;
  log(ds.slice(0, 3));

  // tokenizer = AutoTokenizer.from_pretrained("Langboat/bloom-1b4-zh")
  const tokenizer = await AutoTokenizer.from_pretrained(modelDir);

  // def process_func(example): ... MAX_LENGTH = 256
  const MAX_LENGTH = 256;
  const process_func = (example: Record<string, unknown>) => {
    const instruction = tokenizer(['Human: ' + example.instruction, example.input].join('\n').trim() + '\n\nAssistant: ');
    const response = tokenizer(example.output + tokenizer.eos_token!);
    let input_ids = [...instruction.input_ids, ...response.input_ids];
    let attention_mask = [...instruction.attention_mask, ...response.attention_mask];
    let labels = [...new Array(instruction.input_ids.length).fill(-100), ...response.input_ids];
    if (input_ids.length > MAX_LENGTH) {
      input_ids = input_ids.slice(0, MAX_LENGTH);
      attention_mask = attention_mask.slice(0, MAX_LENGTH);
      labels = labels.slice(0, MAX_LENGTH);
    }
    return { input_ids, attention_mask, labels };
  };

  // tokenized_ds = ds.map(process_func, remove_columns=ds.column_names)
  const tokenized_ds = ds.map(process_func, { remove_columns: ds.column_names });
  log(tokenizer.decode(tokenized_ds.at(1).input_ids as number[]));

  // model = AutoModelForCausalLM.from_pretrained("Langboat/bloom-1b4-zh", low_cpu_mem_usage=True)
  const model = await AutoModelForCausalLM.from_pretrained(modelDir, { dtype: 'float32' });

  // config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=10, prefix_projection=True)
  const config = new PrefixTuningConfig({ task_type: TaskType.CAUSAL_LM, num_virtual_tokens: 10, prefix_projection: opts.prefix_projection ?? false });

  // model = get_peft_model(model, config); model.print_trainable_parameters()
  const peft_model = get_peft_model(model, config);
  const line = opts.quiet ? format(peft_model.get_nb_trainable_parameters()) : peft_model.print_trainable_parameters();

  // args = TrainingArguments(output_dir="./chatbot", per_device_train_batch_size=1, gradient_accumulation_steps=8,
  //                          logging_steps=10, num_train_epochs=1)
  const args = new TrainingArguments({
    output_dir: outputDir,
    per_device_train_batch_size: 1,
    gradient_accumulation_steps: 8,
    logging_steps: 10,
    num_train_epochs: opts.num_train_epochs ?? 1,
    ...(opts.max_steps ? { max_steps: opts.max_steps } : {}),
    ...(opts.learning_rate ? { learning_rate: opts.learning_rate } : {}),
    disable_tqdm: opts.quiet ?? false,
  });

  // trainer = Trainer(model=model, args=args, train_dataset=tokenized_ds,
  //                   data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True))
  const trainer = new Trainer({
    model: peft_model,
    args,
    train_dataset: tokenized_ds,
    data_collator: new DataCollatorForSeq2Seq({ tokenizer, padding: true }),
    callbacks: opts.quiet ? [] : undefined,
  });

  // trainer.train()
  const result = await trainer.train();
  await peft_model.save_pretrained(path.join(outputDir, 'adapter'));

  // ipt = tokenizer("Human: {}\n{}".format("考试有哪些技巧？", "").strip() + "\n\nAssistant: ", return_tensors="pt")
  // tokenizer.decode(model.generate(**ipt, max_length=128, do_sample=True)[0], skip_special_tokens=True)
  const ipt = tokenizer('Human: 考试有哪些技巧？\n'.trim() + '\n\nAssistant: ', { return_tensors: 'pt' });
  const out = await peft_model.generate({ ...ipt, max_length: 64, do_sample: true, seed: 0 });
  const text = tokenizer.decode((out.tolist() as number[][])[0], { skip_special_tokens: true });
  log(text);

  await peft_model.dispose();
  await model.dispose();
  return { trainable: line, result, text, adapter: path.join(outputDir, 'adapter') };
}

function format([t, a]: [number, number]): string {
  return `trainable params: ${t.toLocaleString('en-US')} || all params: ${a.toLocaleString('en-US')}`;
}

function argValue(flag: string): string | undefined {
  const i = process.argv.indexOf(flag);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (require.main === module) {
  main({ model: argValue('--model'), data: argValue('--data'), output: argValue('--output'), prefix_projection: process.argv.includes('--prefix-projection') }).catch((err) => {
    console.error(`${(err as { code?: string }).code ?? 'Error'}: ${(err as Error).message}`);
    process.exit(1);
  });
}
