"""pefs/protocols."""
