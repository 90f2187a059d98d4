"""tunelab: fine-tune pre-trained language models on your own data, and find out honestly whether it helped."""

__version__ = "0.1.0"
