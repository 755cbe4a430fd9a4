"""The results report: charts rendered as PNG bytes from plain numbers (`charts`)."""
