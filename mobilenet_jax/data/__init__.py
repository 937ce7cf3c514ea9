"""Input: TFDS pipelines, the embedded digits builder and a synthetic source."""
