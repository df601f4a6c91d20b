"""Image classification: datasets, loaders, networks, and the stages and report of `experiments`."""
