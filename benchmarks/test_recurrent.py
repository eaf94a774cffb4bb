"""LSTM (one layer, batch first), batch 64, 32 timesteps, 128 inputs -> 128 hidden: forward
and backward through time."""
FAMILY = "recurrent"


def test_recurrent(run_case, case, impl):
    run_case(case, impl)
