"""The Example schema, dataset_info.json, shard writing, TFDS sources, preprocessing, pipelines."""
