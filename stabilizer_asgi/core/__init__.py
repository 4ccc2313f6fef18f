"""The pure core: no I/O, no event loop, time passed in as an argument."""
