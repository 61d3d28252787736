"""Multi-run studies: a sweep of arms × tasks × seeds, then a table and a plot across them."""
