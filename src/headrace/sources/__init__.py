"""Source kinds: how raw inputs are listed, fingerprinted and read into the engine."""
