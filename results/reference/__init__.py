"""Published reference figures (data only); see README.md in this folder."""
