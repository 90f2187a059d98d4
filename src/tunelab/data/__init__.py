"""The data stage: read files into canonical records, render, tokenise, batch."""
