"""Layer blobs: decompression, verification while streaming, and safe unpacking."""
