#!/usr/bin/python3
# A second opinion on the reasoning task's learnability, independent of engram's C++: a small
# byte-level GPT in PyTorch, trained from scratch on one-segment qa4 samples with the loss on the
# answer bytes only (as engram-rmt-train's stage 1), scored on held-out samples.
#
#   /usr/bin/python3 bench/rmt_reasoning_probe.py [--prefix] [--forms both|direct|inverse] [--steps N] [--lm-weight W]
#                                                 [--words] [--ask-first] [--length N] [--d-model D --layers L]
#                                                 [--bind-weight W [--bind-question]] [--facts K [--ask-all]] [--mlp] [--seed S]
#
# The samples follow include/engram/tasks/babi.hpp (qa4_facts): two facts "The P is R of the C." with
# three distinct places and two distinct directions, a direct ("What is R of the C?") or inverse
# ("What is the C R' of?") question; the background between facts and question is random letters
# of random length (the C++ task draws fortunes; the binding the model must learn is the same).
# --prefix reads the document bidirectionally (a prefix LM; the answer stays causal), as the
# report's BERT encoder does. Accuracy: the first two answer bytes right under teacher forcing
# (enough to tell the six places apart: bathroom and bedroom differ in the second byte); with --words
# (one token per word) the answer token. --ask-first is the control without the comparison: the facts
# keep their order and the question asks about the first. --bind-weight adds the binding labels of
# include/engram/tasks/bindings.hpp (each fact's direction names its place; with --bind-question the
# question's direction names the answer too). --facts K trains on K facts about one centre (--ask-all:
# a question about each, each followed by its answer); the held-out score is always the task's own.
# --mlp (with --words) replaces the GPT by an MLP of the one-hot tokens (no attention, nothing to route).
import argparse
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

PLACES = ["bathroom", "hallway", "garden", "office", "bedroom", "kitchen"]
DIRECTIONS = ["north", "south", "east", "west"]  # DIRECTIONS[i ^ 1] is the opposite of DIRECTIONS[i]


def sample(rng, length, forms, ask_first=False, facts=2, ask_all=False):
    """The document before the questions, its (question, answer) pairs, and the length of its facts.
    facts > 2 draws that many facts about one centre (distinct places and directions); ask_all asks
    about every fact, in random order, each question followed by its answer (one label each)."""
    c, *p = rng.sample(range(6), facts + 1)
    d = rng.sample(range(4), facts)
    order = list(range(facts))
    if not ask_first and facts > 2:
        rng.shuffle(order)
    elif not ask_first and rng.random() < 0.5:  # two facts: the draws of the original probe
        order.reverse()
    text, binds = "", []  # binds: (character offset of each fact's direction, the fact's place)
    for i in order:
        text += " " if text else ""
        binds.append((len(text) + len(f"The {PLACES[p[i]]} is "), PLACES[p[i]]))
        text += f"The {PLACES[p[i]]} is {DIRECTIONS[d[i]]} of the {PLACES[c]}."
    asked = list(range(facts)) if ask_all else [0 if ask_first else rng.randrange(facts)]
    if ask_all:
        rng.shuffle(asked)
    qas = []
    for a in asked:
        direct = forms == "direct" or (forms == "both" and rng.random() < 0.5)
        q = f"What is {DIRECTIONS[d[a]]} of the {PLACES[c]}?" if direct else f"What is the {PLACES[c]} {DIRECTIONS[d[a] ^ 1]} of?"
        qas.append((q, PLACES[p[a]], q.index(DIRECTIONS[d[a] if direct else d[a] ^ 1], 7)))
    room = max(0, length - len(text) - len(qas[0][0]))
    n_facts = len(text)
    text += "".join(rng.choice("abcdefghijklmnopqrstuvwxyz   ") for _ in range(rng.randint(0, room)))
    return text, qas, n_facts, binds


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


class CausalMLP(nn.Module):
    """--mlp: no attention, no positions to learn: the logits at row i are an MLP of the one-hot
    tokens 0..i (each position its own input block), a model to which every token at every fixed
    position is directly visible."""

    def __init__(self, d, layers, positions, vocab):
        super().__init__()
        self.positions, self.vocab = positions, vocab
        widths = [positions * vocab] + [4 * d] * layers
        self.net = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.GELU())], nn.Linear(widths[-1], 256))

    def forward(self, tokens, prefix):
        b, t = tokens.shape
        x = F.one_hot(F.pad(tokens, (0, self.positions - t)), self.vocab).float()  # [B, P, V]
        seen = (torch.arange(self.positions)[None, :] <= torch.arange(t)[:, None]).float()  # [T, P]: row i sees tokens 0..i
        return self.net((seen[None, :, :, None] * x[:, None]).reshape(b, t, -1))


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


def bind_tokens(place, words):
    """The --bind-weight labels naming a place: its word, or its first two bytes."""
    return [WORD_ID[place]] if words else list(place[:2].encode())


def batch(rng, n, args, facts=None, ask_all=None):
    """n samples as tokens (bytes, or words with --words): the answer labels, the next-token labels of
    the facts and the questions (--lm-weight), and each sample's answers as (first token, answer tokens)."""
    facts = args.facts if facts is None else facts
    ask_all = args.ask_all if ask_all is None else ask_all
    seqs = []
    for _ in range(n):
        x, qas, n_facts, binds = sample(rng, args.length, args.forms, args.ask_first, facts, ask_all)
        s, answers, lm = encode(x, args.words), [], [(1, len(encode(x[:n_facts], args.words)))]
        bind = [(len(encode(x[:at], args.words)), bind_tokens(y, args.words)) for at, y in binds]
        for i, (q, y, at) in enumerate(qas):
            q = (" " if i else "") + q
            if args.bind_question:  # the question's direction names the answer too
                bind.append((len(s) + len(encode(q[: at + (1 if i else 0)], args.words)), bind_tokens(y, args.words)))
            q_tokens = encode(q, args.words)
            lm.append((len(s) + 1, len(s) + len(q_tokens)))
            s += q_tokens
            answer = [WORD_ID[y]] if args.words else list(y.encode())
            answers.append((len(s), answer))
            s += answer
        seqs.append((s, answers, lm, bind))
    t = max(len(s) for s, _, _, _ in seqs)
    tokens = torch.zeros(n, t, dtype=torch.long)
    labels = torch.full((n, t), -100)
    text = torch.full((n, t), -100)
    binding = torch.full((n, t), -100)
    for r, (s, answers, lm, bind) in enumerate(seqs):
        tokens[r, : len(s)] = torch.tensor(s)
        for at, answer in answers:
            labels[r, at - 1 : at - 1 + len(answer)] = torch.tensor(answer)
        for a, b in lm:  # token j predicts token j + 1 for j + 1 in [a, b)
            text[r, a - 1 : b - 1] = torch.tensor(s[a:b])
        for at, place in bind:  # the direction's first tokens name the fact's place (--bind-weight)
            binding[r, at : at + len(place)] = torch.tensor(place)
    # The last question token predicts the first answer: the prefix ends before it.
    prefix = torch.tensor([answers[0][0] - 1 for _, answers, _, _ in seqs]) if args.prefix else None
    return tokens, labels, [answers for _, answers, _, _ in seqs], prefix, text, binding


def held_out_accuracy(model, args, n=200):
    """The first two answer tokens right under teacher forcing (the one token with --words), on the
    task itself (two facts, one question) whatever the training mix."""
    rng, right = random.Random(10**6), 0
    with torch.no_grad():
        for _ in range(n // 50):
            tokens, _, answers, prefix, _, _ = batch(rng, 50, args, facts=2, ask_all=False)
            best = model(tokens, prefix).argmax(-1)
            for r, [(at, answer)] in enumerate(answers):
                k = min(2, len(answer))
                right += int(best[r, at - 1 : at - 1 + k].tolist() == answer[:k])
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
    p.add_argument("--facts", type=int, default=2, choices=[2, 3, 4], help="training samples: facts about one centre")
    p.add_argument("--ask-all", action="store_true", help="training samples ask about every fact, each question followed by its answer")
    p.add_argument("--bind-weight", type=float, default=0.0,
                   help="add a loss naming each fact's place at its direction's first tokens (intermediate supervision), this weight")
    p.add_argument("--bind-question", action="store_true", help="with --bind-weight: the question's direction names the answer as well")
    p.add_argument("--mlp", action="store_true", help="with --words: an MLP of the one-hot tokens instead of the GPT (no attention)")
    p.add_argument("--seed", type=int, default=0, help="the weights' seed (the training samples' is seed + 1)")
    p.add_argument("--lm-weight", type=float, default=0.0, help="add a next-byte loss on the facts and the question, this weight")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    positions = args.length + 64 * args.facts
    if args.mlp and not args.words:
        p.error("--mlp reads one-hot words: it needs --words")
    model = CausalMLP(args.d_model, args.layers, positions, len(WORDS)) if args.mlp else GPT(args.d_model, args.layers, args.heads, positions)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed + 1)
    for step in range(1, args.steps + 1):
        tokens, labels, _, prefix, text, binding = batch(rng, args.batch, args)
        logits = model(tokens, prefix).view(-1, 256)
        loss = F.cross_entropy(logits, labels.view(-1), ignore_index=-100)
        if args.lm_weight > 0:  # mean answer loss + weight x mean next-byte loss of the facts and question
            loss = loss + args.lm_weight * F.cross_entropy(logits, text.view(-1), ignore_index=-100)
        if args.bind_weight > 0:  # + weight x mean loss of naming each fact's place at its direction
            loss = loss + args.bind_weight * F.cross_entropy(logits, binding.view(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0:
            print(f"step {step}  loss {loss.item():.4f}  held-out {held_out_accuracy(model, args):.3f}", flush=True)


if __name__ == "__main__":
    main()
