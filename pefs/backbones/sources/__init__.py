"""pefs/backbones/sources."""
