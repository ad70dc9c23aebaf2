"""Delta tables on the lake: layout, snapshots for reading, and publishing in each write mode."""
