"""The on-disk store: layer cache, images, locks and garbage collection."""
