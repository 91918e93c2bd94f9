"""(d) Conv1D + MaxPooling1D + Bidirectional(LSTM forward, GRU backward) on a real multivariate series.

Data: the US quarterly macroeconomic data set that statsmodels ships (statsmodels.datasets.macrodata,
1959Q1-2009Q3; nothing is downloaded), prepared as in examples/macro_bidirectional.py: growth rates
and levels of 11 series, standardized; from the last WINDOW quarters, predict next quarter's change
of the unemployment rate ("no change" is the baseline to beat). The last 20% of the quarters test.

The Keras tutorial model, as Keras code: Conv1D(16, 3, activation="relu", padding="same") ->
MaxPooling1D(2) -> Bidirectional(LSTM(16), backward_layer=GRU(16, go_backwards=True)) -> Dense(1).
"""

from .. import macro_bidirectional as torch_version
from ._common import keras, report, setup

WINDOW = torch_version.WINDOW


def main():
    setup()
    loaded = torch_version.load()
    if loaded is None:
        print("skipped: this example needs statsmodels (pip install statsmodels), which ships the data")
        return {"skipped": "statsmodels not installed"}
    feats, unemp, years = loaded
    x, y, split, c_std = torch_version.windows(feats, unemp)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((WINDOW, feats.shape[1])),
        layers.Conv1D(16, 3, activation="relu", padding="same"),
        layers.MaxPooling1D(2),
        layers.Bidirectional(layers.LSTM(16), backward_layer=layers.GRU(16, go_backwards=True)),
        layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    history = model.fit(x[:split], y[:split], epochs=20, batch_size=32, verbose=0).history["loss"]
    pred, rmse, naive = torch_version.evaluate(feats, unemp, split,
                                               model.predict(x[split:], verbose=0)[:, 0] * c_std)
    counts = report(model)

    torch_version.plot(history, years, unemp, pred, split, "keras3_macro_bidirectional",
                       "training loss (Keras 3 + rnn.keras3)")
    return {"test_rmse": round(rmse, 3), "no_change_rmse": round(naive, 3), **counts}


if __name__ == "__main__":
    main()
