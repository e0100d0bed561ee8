#!/usr/bin/python3
# A second opinion on the reasoning task's learnability, independent of engram's C++: a small
# byte-level GPT in PyTorch, trained from scratch on one-segment qa4 samples with the loss on the
# answer bytes only (as engram-rmt-train's stage 1), scored on held-out samples.
#
#   /usr/bin/python3 bench/rmt_reasoning_probe.py [--prefix] [--forms both|direct|inverse] [--steps N] [--lm-weight W]
#                                                 [--words] [--ask-first] [--length N] [--d-model D --layers L]
#
# The samples follow include/engram/tasks/babi.hpp (qa4_facts): two facts "The P is R of the C." with
# three distinct places and two distinct directions, a direct ("What is R of the C?") or inverse
# ("What is the C R' of?") question; the background between facts and question is random letters
# of random length (the C++ task draws fortunes; the binding the model must learn is the same).
# --prefix reads the document bidirectionally (a prefix LM; the answer stays causal), as the
# report's BERT encoder does. Accuracy: the first two answer bytes right under teacher forcing
# (enough to tell the six places apart: bathroom and bedroom differ in the second byte); with --words
# (one token per word) the answer token. --ask-first is the control without the comparison: the facts
# keep their order and the question asks about the first.
import argparse
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

PLACES = ["bathroom", "hallway", "garden", "office", "bedroom", "kitchen"]
DIRECTIONS = ["north", "south", "east", "west"]  # DIRECTIONS[i ^ 1] is the opposite of DIRECTIONS[i]


def sample(rng, length, forms, ask_first=False):
    c, p1, p2 = rng.sample(range(6), 3)
    d1, d2 = rng.sample(range(4), 2)
    facts = [f"The {PLACES[p1]} is {DIRECTIONS[d1]} of the {PLACES[c]}.", f"The {PLACES[p2]} is {DIRECTIONS[d2]} of the {PLACES[c]}."]
    if not ask_first and rng.random() < 0.5:
        facts.reverse()
    asked = 0 if ask_first else rng.randrange(2)
    d, answer = [d1, d2][asked], PLACES[[p1, p2][asked]]
    direct = forms == "direct" or (forms == "both" and rng.random() < 0.5)
    question = f"What is {DIRECTIONS[d]} of the {PLACES[c]}?" if direct else f"What is the {PLACES[c]} {DIRECTIONS[d ^ 1]} of?"
    text = facts[0] + " " + facts[1]
    room = max(0, length - len(text) - len(question))
    n_facts = len(text)
    text += "".join(rng.choice("abcdefghijklmnopqrstuvwxyz   ") for _ in range(rng.randint(0, room)))
    return text + question, answer, n_facts


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2, self.heads = nn.LayerNorm(d), nn.LayerNorm(d), heads
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, hidden):  # hidden [B, T, T]: True where row i may not see column j
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(c, 2))
        att = (q @ k.transpose(-1, -2)) / (c // self.heads) ** 0.5
        a = att.masked_fill(hidden[:, None], float("-inf")).softmax(-1) @ v
        x = x + self.out(a.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, d, layers, heads, positions):
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, d), nn.Embedding(positions, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, tokens, prefix):  # prefix [B]: rows and columns below it see each other
        t = tokens.shape[1]
        i = torch.arange(t)
        hidden = (i[None, :] > i[:, None])[None].repeat(tokens.shape[0], 1, 1)
        if prefix is not None:
            inside = i[None, :] < prefix[:, None]
            hidden &= ~(inside[:, :, None] & inside[:, None, :])
        x = self.tok(tokens) + self.pos(i)
        for blk in self.blocks:
            x = blk(x, hidden)
        return self.ln(x) @ self.tok.weight.T


WORDS = ["The", "is", "of", "the", "What", ".", "?", " "] + PLACES + DIRECTIONS + list("abcdefghijklmnopqrstuvwxyz")
WORD_ID = {w: i for i, w in enumerate(WORDS)}


def encode(text, words):
    """Byte ids, or with --words one token per word, punctuation mark, space and background letter."""
    if not words:
        return list(text.encode())
    out, i = [], 0
    while i < len(text):
        for w in sorted(WORDS, key=len, reverse=True):  # longest match first: "the" before "t"
            if text.startswith(w, i) and (len(w) == 1 or not text[i + len(w) : i + len(w) + 1].isalpha()):
                out.append(WORD_ID[w])
                i += len(w)
                break
        else:
            raise ValueError(f"no token for {text[i:]!r}")
    return out


def batch(rng, n, args):
    """n samples as tokens (bytes, or words with --words): the answer labels, the next-token labels of
    the facts and the question (--lm-weight), and each sample's (document, answer) tokens."""
    seqs = []
    for _ in range(n):
        x, y, n_facts = sample(rng, args.length, args.forms, args.ask_first)
        doc = encode(x, args.words)
        answer = [WORD_ID[y]] if args.words else list(y.encode())
        q0 = len(doc) - len(encode(x[x.rfind("What") :], args.words))  # the question starts at its last "What"
        seqs.append((doc, answer, len(encode(x[:n_facts], args.words)), q0))
    t = max(len(d) + len(a) for d, a, _, _ in seqs)
    tokens = torch.zeros(n, t, dtype=torch.long)
    labels = torch.full((n, t), -100)
    text = torch.full((n, t), -100)
    for r, (doc, answer, n_facts, q0) in enumerate(seqs):
        s = doc + answer
        tokens[r, : len(s)] = torch.tensor(s)
        labels[r, len(doc) - 1 : len(s) - 1] = torch.tensor(answer)
        text[r, : n_facts - 1] = torch.tensor(s[1:n_facts])
        text[r, q0 : len(doc) - 1] = torch.tensor(s[q0 + 1 : len(doc)])
    # The last question token predicts the answer: the prefix ends before it.
    prefix = torch.tensor([len(d) - 1 for d, _, _, _ in seqs]) if args.prefix else None
    return tokens, labels, [(d, a) for d, a, _, _ in seqs], prefix, text


def held_out_accuracy(model, args, n=200):
    """The first two answer tokens right under teacher forcing (the one token with --words)."""
    rng, right = random.Random(10**6), 0
    with torch.no_grad():
        for _ in range(n // 50):
            tokens, _, pairs, prefix, _ = batch(rng, 50, args)
            best = model(tokens, prefix).argmax(-1)
            for r, (doc, answer) in enumerate(pairs):
                k = min(2, len(answer))
                right += int(best[r, len(doc) - 1 : len(doc) - 1 + k].tolist() == answer[:k])
    return right / n


def main():
    p = argparse.ArgumentParser(description="qa4 reasoning learnability probe (answer-only loss, byte-level GPT)")
    p.add_argument("--prefix", action="store_true", help="read the document bidirectionally (prefix LM)")
    p.add_argument("--forms", default="both", choices=["both", "direct", "inverse"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--length", type=int, default=120, help="longest document in bytes")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--words", action="store_true", help="one token per word instead of per byte (a word-level tokenizer)")
    p.add_argument("--ask-first", action="store_true", help="control: the question always asks about the first fact (no comparison)")
    p.add_argument("--lm-weight", type=float, default=0.0, help="add a next-byte loss on the facts and the question, this weight")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(args.d_model, args.layers, args.heads, args.length + 16)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(1)
    for step in range(1, args.steps + 1):
        tokens, labels, _, prefix, text = batch(rng, args.batch, args)
        logits = model(tokens, prefix).view(-1, 256)
        loss = F.cross_entropy(logits, labels.view(-1), ignore_index=-100)
        if args.lm_weight > 0:  # mean answer loss + weight x mean next-byte loss of the facts and question
            loss = loss + args.lm_weight * F.cross_entropy(logits, text.view(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0:
            print(f"step {step}  loss {loss.item():.4f}  held-out {held_out_accuracy(model, args):.3f}", flush=True)


if __name__ == "__main__":
    main()
