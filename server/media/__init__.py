"""Frames out of the server: the delivery thread, JPEG and image decoding, recordings and job videos."""
