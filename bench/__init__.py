"""`make bench`: Agentry performance figures beside reference apps (see bench/__main__.py)."""
