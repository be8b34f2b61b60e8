// The Node side of `npm run bench`: peft-node on one config, printed as one JSON line. Mirrors bench/peft_bench.py:
// the train step is forward with num_items_in_batch + backward + clip_grad_norm_ + AdamW + zero_grad (native).
//   node bench/node_bench.js MODEL_DIR BATCH_JSON SETTINGS_JSON
'use strict';
const fs = require('node:fs');
const path = require('node:path');

async function main() {
  const [modelDir, batchFile, settingsJson] = process.argv.slice(2);
  const settings = JSON.parse(settingsJson);
  const t_import = performance.now();
  const p = require(path.join(__dirname, '..', 'dist'));
  p.runtime_info(); // loads the addon and libtorch, as `import torch` does on the Python side
  const import_s = (performance.now() - t_import) / 1000;
  const batch = JSON.parse(fs.readFileSync(batchFile, 'utf8'));

  const t0 = performance.now();
  const model = await p.AutoModelForCausalLM.from_pretrained(modelDir, { dtype: 'float32' });
  const load_s = (performance.now() - t0) / 1000;
  p.set_seed(0);
  const pm = p.get_peft_model(model, new p.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: settings.num_virtual_tokens, prefix_projection: settings.prefix_projection }));
  // As the Python side: torch's AdamW over the trainable parameters, clip_grad_norm_ to 1.0.
  const params = pm.parameters().filter((q) => q.requires_grad);
  const optimizer = new p.AdamW(params, { lr: settings.learning_rate });
  const num_items = batch.labels.reduce((n, row) => n + row.slice(1).filter((v) => v !== -100).length, 0);
  const inputs = { input_ids: batch.input_ids, attention_mask: batch.attention_mask, labels: batch.labels };

  const trainStep = async () => {
    const out = await pm.forward({ ...inputs, num_items_in_batch: num_items }, { backward: true, return_logits: false });
    await p.clip_grad_norm_(params, 1.0);
    await optimizer.step();
    await optimizer.zero_grad();
    return out.loss;
  };
  const forward = async () => (await pm.forward(inputs, { return_logits: false })).loss;
  const generate = async () => {
    const out = await pm.generate({ input_ids: batch.prompt, max_new_tokens: settings.gen_new, eos_token_id: [] });
    if (out.dims[1] !== batch.prompt[0].length + settings.gen_new) throw new Error(`generated ${out.dims}`);
  };
  const timed = async (fn, warmup, repeats) => {
    for (let i = 0; i < warmup; i++) await fn();
    const times = [];
    for (let i = 0; i < repeats; i++) {
      const t = performance.now();
      await fn();
      times.push((performance.now() - t) / 1000);
    }
    times.sort((a, b) => a - b);
    return times[Math.floor(times.length / 2)];
  };
  const train_step_s = await timed(trainStep, settings.warmup, settings.repeats);
  const forward_s = await timed(forward, 1, settings.repeats);
  const gen_s = await timed(generate, 1, 3);
  const info = p.runtime_info();
  console.log(JSON.stringify({
    side: 'peft-node', load_s, import_s, train_step_s, forward_s, gen_tokens_per_s: settings.gen_new / gen_s,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024, threads: info.numThreads,
    versions: { torch: info.torchVersion, node: process.version, 'peft-node': require('../package.json').version },
  }));
  await pm.dispose();
  await model.dispose();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
