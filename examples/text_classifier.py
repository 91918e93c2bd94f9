"""(e) Embedding + two stacked LSTMCells text classifier with dropout.

Keras tutorial model: Embedding(V, 16, mask_zero=True) -> RNN([LSTMCell(32, dropout=0.2,
recurrent_dropout=0.2), LSTMCell(32, dropout=0.2)]) -> Dense(2). rnn.keras has no implicit mask
propagation, so the padding mask (token id 0) is passed to the RNN explicitly.

Data: a tiny synthetic review set built from templates. The label depends on the order of the
words: "not" flips the sentiment of the adjective that follows it ("not bad" is positive), and
filler words move the sentiment word around, so a bag of words cannot solve it.
"""
import random

import torch
from torch import nn

import rnn.keras as rk

from ._common import fit, predict, pyplot, save, seed_everything

POSITIVE = ["good", "great", "fine", "superb", "lovely", "fun"]
NEGATIVE = ["bad", "awful", "boring", "dull", "poor", "weak"]
SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the ending", "the music"]
FILLER = ["really", "quite", "honestly", "overall", "so", "very", "at times"]


def sentence(rng):
    positive = rng.random() < 0.5
    negated = rng.random() < 0.4
    adjective = rng.choice(POSITIVE if positive != negated else NEGATIVE)
    words = rng.choice(SUBJECTS).split() + ["was"]
    words += rng.sample(FILLER, rng.randint(0, 2))
    words += (["not"] if negated else []) + [adjective]
    if rng.random() < 0.5:
        words += ["overall"] if rng.random() < 0.5 else ["i", "think"]
    return words, int(positive)


def encode(sentences, vocab, length):
    ids = torch.zeros(len(sentences), length, dtype=torch.long)  # 0 = padding
    for row, words in enumerate(sentences):
        ids[row, :len(words)] = torch.tensor([vocab[w] for w in words])
    return ids


class TextClassifier(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 16, padding_idx=0)
        self.rnn = rk.RNN([rk.LSTMCell(32, dropout=0.2, recurrent_dropout=0.2, input_dim=16),
                           rk.LSTMCell(32, dropout=0.2, input_dim=32)])
        self.out = nn.Linear(32, 2)

    def forward(self, ids):
        # mask = padding (Keras mask_zero=True); RNN returns the last valid step's output
        return self.out(self.rnn(self.embed(ids), mask=ids != 0))


def main():
    seed_everything(0)
    rng = random.Random(0)
    data = [sentence(rng) for _ in range(1200)]
    vocab = {w: i + 1 for i, w in enumerate(sorted({w for words, _ in data for w in words}))}
    length = max(len(words) for words, _ in data)
    ids = encode([w for w, _ in data], vocab, length)
    labels = torch.tensor([y for _, y in data])
    split = 1000
    model = TextClassifier(len(vocab) + 1)
    history = fit(model, ids[:split], labels[:split], epochs=12, batch_size=50, lr=1e-2,
                  loss_fn=nn.CrossEntropyLoss())
    pred = predict(model, ids[split:]).argmax(1)
    accuracy = float((pred == labels[split:]).float().mean())
    print(f"{split} training / {len(data) - split} test sentences, vocabulary {len(vocab)}, length <= {length}")
    print(f"test accuracy {accuracy:.3f}")
    for words in (["the", "movie", "was", "not", "bad"], ["the", "plot", "was", "really", "dull", "i", "think"]):
        p = torch.softmax(predict(model, encode([words], vocab, length)), 1)[0, 1]
        print(f"  {' '.join(words)!r}: P(positive) = {float(p):.2f}")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(history)
    ax.set(title=f"stacked LSTMCells, test accuracy {accuracy:.3f}", xlabel="epoch",
           ylabel="training cross-entropy")
    save(fig, "text_classifier")
    return {"test_accuracy": round(accuracy, 3)}


if __name__ == "__main__":
    main()
