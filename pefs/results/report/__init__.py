"""pefs/results/report."""
