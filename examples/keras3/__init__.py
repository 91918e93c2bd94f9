"""The seed Keras tutorials as Keras 3 scripts (torch backend), accelerated by rnn.keras3.

    python -m examples.keras3          run them all
    python -m examples.keras3.NAME     run one: next_number, sine_simplernn, stacked_regressor,
                                       macro_bidirectional, text_classifier, adding_problem

Each is the tutorial's Sequential / compile / fit code with two extra lines in _common.setup():
`rnn.keras3.install()` (Keras's own LSTM / GRU / SimpleRNN / Bidirectional then run on the fused
recurrence) and seeding. Each prints its metric, which layers ran fused and how many fused calls
were made, and saves a PNG plot under examples/out/ (keras3_NAME.png). macro_bidirectional reads
the US macro data set that statsmodels ships; without statsmodels it says so and is skipped.
"""
EXAMPLES = ("next_number", "sine_simplernn", "stacked_regressor", "macro_bidirectional",
            "text_classifier", "adding_problem")
