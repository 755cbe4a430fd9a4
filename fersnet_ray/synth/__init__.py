"""Stage 3, synthesize: balanced Parquet shards of synthetic faces (`job`), their checks (`verify`) and quality (`quality`)."""


class SynthError(RuntimeError):
    """A fold that cannot be synthesised or verified; the message names the thing and the reason."""
