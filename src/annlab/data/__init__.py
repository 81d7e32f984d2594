"""The data part: datasets built in and the user's own, and the inputs' preprocessing."""
