"""pefs/model."""
