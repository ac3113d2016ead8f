"""pefs/runtime."""
