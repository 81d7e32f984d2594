"""The training part: the networks, annlab's training loop and how it runs."""
