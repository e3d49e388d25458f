"""One module per dashboard tab; each builds its components and wires its handlers."""
