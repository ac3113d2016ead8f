"""pefs/sweep."""
