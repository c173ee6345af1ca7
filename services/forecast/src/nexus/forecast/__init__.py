"""The Nexus forecast service: statistical models per series, chosen by backtest, with intervals."""
