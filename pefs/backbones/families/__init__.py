"""pefs/backbones/families."""
