"""The seed Keras tutorials' models rebuilt with rnn.keras + torch.nn, trained with plain PyTorch loops.

    python -m examples                 run them all (what `make demo` does)
    python -m examples.NAME            run one: next_number, sine_simplernn, stacked_regressor,
                                       macro_bidirectional, text_classifier, adding_problem

Each prints its metric and saves a PNG plot under examples/out/.
macro_bidirectional reads the US macro data set that statsmodels ships (pip install statsmodels);
without statsmodels it says so and is skipped.
"""
EXAMPLES = ("next_number", "sine_simplernn", "stacked_regressor", "macro_bidirectional",
            "text_classifier", "adding_problem")
