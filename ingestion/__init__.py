"""dlt sources, one package per source system, and the runner that loads them."""
