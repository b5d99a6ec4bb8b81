"""Files in and out: input readers (JSON Lines, JSON, CSV, Parquet, saved datasets), pairs from their rows, the
resumable JSON Lines writer and the one atomic-write helper."""
