"""pefs/export."""
