"""What the generator talks to: tap started in subprocesses, the baselines, the naive peer."""
