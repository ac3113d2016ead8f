"""pefs/protocols/selection."""
