"""LSTM (one layer, batch first) and bidirectional GRU, batch 64, 32 timesteps, 128 inputs
-> 128 hidden (per direction): forward and backward through time."""
FAMILY = "recurrent"


def test_recurrent(run_case, case, impl):
    run_case(case, impl)
