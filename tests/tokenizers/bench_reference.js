// The JavaScript side of bench/bench_tokenizer: encodes a text with tokenizers.js
// (@huggingface/tokenizers, the reference JavaScript implementation) and prints the best time of
// a few runs, the number of ids and their checksum as JSON.
// Usage: node bench_reference.js NODE_MODULES MODEL_DIR TEXT_FILE REPEATS
'use strict';
const fs = require('fs');
const path = require('path');

const [nodeModules, modelDir, textFile, repeats] = process.argv.slice(2).map((a, i) => (i < 3 ? path.resolve(a) : a));
const { Tokenizer } = require(path.join(nodeModules, '@huggingface', 'tokenizers'));
const json = JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer.json'), 'utf8'));
const configPath = path.join(modelDir, 'tokenizer_config.json');
const config = fs.existsSync(configPath) ? JSON.parse(fs.readFileSync(configPath, 'utf8')) : {};
const tokenizer = new Tokenizer(json, config);
const text = fs.readFileSync(textFile, 'utf8');

let best = Infinity, bestCpu = Infinity, ids = [];
for (let r = 0; r < Number(repeats || 3); ++r) {
  const start = process.hrtime.bigint(), cpu = process.cpuUsage();
  ids = tokenizer.encode(text, { add_special_tokens: false }).ids;
  best = Math.min(best, Number(process.hrtime.bigint() - start) * 1e-9);
  const used = process.cpuUsage(cpu);
  bestCpu = Math.min(bestCpu, (used.user + used.system) * 1e-6);
}
let checksum = 0;  // order-sensitive, matches bench_tokenizer.cpp
for (const id of ids) checksum = (Math.imul(checksum, 31) + id) >>> 0;
console.log(JSON.stringify({ seconds: best, cpu_seconds: bestCpu, ids: ids.length, checksum }));
