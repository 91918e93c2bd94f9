"""(e) Embedding(mask_zero=True) + two stacked LSTMCells text classifier with dropout.

The Keras tutorial model, as Keras code: Embedding(V, 16, mask_zero=True) -> RNN([LSTMCell(32,
dropout=0.2, recurrent_dropout=0.2), LSTMCell(32, dropout=0.2)]) -> Dense(2). The padding mask
flows from the Embedding to the RNN as Keras does it; rnn.keras3 runs the stacked cells as one
fused recurrence per cell, with the dropout masks Keras draws.

Data: the synthetic review set of examples/text_classifier.py ("not" flips the sentiment of the
adjective after it, filler words move it around, so a bag of words cannot solve it).
"""
import random

import numpy as np

from ..text_classifier import encode, sentence
from ._common import keras, pyplot, report, save, setup


def main():
    setup()
    rng = random.Random(0)
    data = [sentence(rng) for _ in range(1200)]
    vocab = {w: i + 1 for i, w in enumerate(sorted({w for words, _ in data for w in words}))}
    length = max(len(words) for words, _ in data)
    ids = encode([w for w, _ in data], vocab, length).numpy().astype("int32")
    labels = np.array([y for _, y in data])
    split = 1000
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((length,), dtype="int32"),
        layers.Embedding(len(vocab) + 1, 16, mask_zero=True),
        layers.RNN([layers.LSTMCell(32, dropout=0.2, recurrent_dropout=0.2), layers.LSTMCell(32, dropout=0.2)]),
        layers.Dense(2),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(ids[:split], labels[:split], epochs=8, batch_size=50, verbose=0).history["loss"]
    _, accuracy = model.evaluate(ids[split:], labels[split:], verbose=0)
    print(f"{split} training / {len(data) - split} test sentences, vocabulary {len(vocab)}, length <= {length}")
    print(f"test accuracy {accuracy:.3f}")
    for words in (["the", "movie", "was", "not", "bad"], ["the", "plot", "was", "really", "dull", "i", "think"]):
        logits = model.predict(encode([words], vocab, length).numpy().astype("int32"), verbose=0)
        p = np.exp(logits[0]) / np.exp(logits[0]).sum()
        print(f"  {' '.join(words)!r}: P(positive) = {p[1]:.2f}")
    counts = report(model)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(history)
    ax.set(title=f"stacked LSTMCells (Keras 3), test accuracy {accuracy:.3f}", xlabel="epoch",
           ylabel="training cross-entropy")
    save(fig, "keras3_text_classifier")
    return {"test_accuracy": round(float(accuracy), 3), **counts}


if __name__ == "__main__":
    main()
